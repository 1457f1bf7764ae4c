"""The schema (what `snakemake` accepts) and the package (what `streamline` accepts) name the same choices,
and the workflow's flags carry the config's values: a value added or changed on one side only fails here,
not in a user's run. (Training defaults are not compared: the settings read them from the schema.)"""

import argparse
import dataclasses
from pathlib import Path

import pytest
import yaml

from streamline import config
from streamline.replace import NETS
from streamline.schema import load_schema, schema_default, schema_enum
from streamline.score import METRICS
from streamline.store import STORAGE_DTYPES
from streamline.training.replacement import TRAINABLE_NETS
from streamline.training.settings import (
    LOSSES,
    MSE_LOSSES,
    TrainSettings,
    add_arguments,
    config_value,
    settings_from,
    workflow_flags,
)

ROOT = Path(__file__).parents[1]
SCHEMA = load_schema()
P = SCHEMA["properties"]


def test_choices_are_the_packages():
    from streamline import layout
    from streamline.training.recipes import RECIPES

    assert schema_enum("network") == [*NETS, "linear"] == list(layout.NETS)  # linear: built by linear.py
    assert set(TRAINABLE_NETS) == set(NETS) - {"none"} | {"linear"}  # linear: its patch (linear-{loss})
    assert schema_enum("loss") == list(LOSSES) == list(RECIPES) == list(layout.LOSS_TABLE)  # one entry per loss
    from streamline.networks import NETWORKS  # the custom networks: the table's custom rows, each a class

    assert set(NETWORKS) == {n for n, net in layout.NETWORKS.items() if net.custom}
    assert P["train"]["properties"]["mse_loss"]["enum"] == list(MSE_LOSSES)
    assert schema_enum("metric") == list(METRICS)
    assert set(schema_enum("dtype")) == set(STORAGE_DTYPES)


@pytest.mark.parametrize("preset", ["config.yaml", *sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))])
@pytest.mark.parametrize("loss", LOSSES)
def test_the_workflows_flags_give_the_settings_the_config_says(preset, loss):
    """What `snakemake` passes to `streamline train` parses into exactly the config's values."""
    conf = config.load(ROOT / preset if preset == "config.yaml" else ROOT / "configs" / preset)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    settings = settings_from(parser.parse_args(workflow_flags(conf, loss)))
    for field in dataclasses.fields(TrainSettings):
        key = field.metadata["key"]
        if key and field.metadata["rerun"] and loss in field.metadata["losses"]:
            assert getattr(settings, field.name) == config_value(conf, key), field.name
    assert settings.kd_temperature == (conf["kd"]["temperature"] if loss == "kd" else schema_default("kd.temperature"))
    expected_samples = conf["llm"]["max_train_samples"] or conf["train_num_data"] if loss != "mse" else 0
    assert settings.train_samples == expected_samples


def test_the_readme_config_table_shows_the_schemas_defaults():
    """README's config-keys table quotes the schema's defaults: a default changed in the schema alone fails here."""
    import re

    text = (ROOT / "README.md").read_text()
    table = text[text.index("| key | default | meaning |") :].split("\n\n")[0]
    checked = 0
    for row in table.splitlines()[2:]:
        keys_cell, default_cell = row.split("|")[1:3]
        keys = re.findall(r"`([a-z_.]+)`", keys_cell)
        values = re.findall(r"`([^`]*)`", re.sub(r"\(demo[^)]*\)", "", default_cell))  # the schema's, not the demo's
        if len(keys) != len(values):
            continue  # a default in words ("derived from model_name", "the paper's seven")
        for key, value in zip(keys, values):
            node = P
            for part in key.split("."):
                node = node[part] if part in node else node.get("properties", {}).get(part, {})
            if "default" in node:
                assert yaml.safe_load(value) == node["default"], (
                    f"README says {key}: {value}, the schema {node['default']}"
                )
                checked += 1
    assert checked >= 15
