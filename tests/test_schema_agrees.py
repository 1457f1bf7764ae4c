"""The schema (what `snakemake` accepts) and the package (what `streamline` accepts) name the same choices
and the same defaults: a value added or changed on one side only fails here, not in a user's run."""

import dataclasses
from pathlib import Path

import yaml

from streamline.replace import NETS
from streamline.score import METRICS
from streamline.store import STORAGE_DTYPES
from streamline.training.replacement import TRAINABLE_NETS
from streamline.training.settings import LOSSES, MSE_LOSSES, TrainSettings

SCHEMA = yaml.safe_load((Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml").read_text())
P = SCHEMA["properties"]


def enum(prop: dict) -> list:
    return prop["enum"] if "enum" in prop else prop["oneOf"][0]["enum"]


def test_choices_are_the_packages():
    assert enum(P["network"]) == [*NETS, "linear"]  # linear is built by linear.py, not replace.py
    assert set(TRAINABLE_NETS) == set(NETS) - {"none"}
    assert enum(P["loss"]) == list(LOSSES)
    assert enum(P["train"]["properties"]["mse_loss"]) == list(MSE_LOSSES)
    assert enum(P["metric"]) == list(METRICS)
    assert set(enum(P["dtype"])) == set(STORAGE_DTYPES)


def test_training_defaults_are_the_packages():
    """Every TrainSettings field the schema also defaults (top level, train.*, kd.* as kd_*) agrees."""
    compared = 0
    for field in dataclasses.fields(TrainSettings):
        for where, key in ((P, field.name), (P["train"]["properties"], field.name),
                           (P["kd"]["properties"], field.name.removeprefix("kd_"))):
            if key in where and "default" in where[key]:
                assert where[key]["default"] == field.default, field.name
                compared += 1
                break
    assert compared >= 12
