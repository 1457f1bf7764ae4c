"""The one config schema (config.schema.yaml, shipped in the package): its path and its defaults.

The workflow validates config.yaml against it (workflow/schemas/ links here), `streamline check-config`
does the same, and the training settings read their defaults from it. Kept small and free of heavy imports:
every stage that reads a default imports this module.
"""

from __future__ import annotations

from dataclasses import MISSING
from functools import lru_cache
from pathlib import Path

SCHEMA = Path(__file__).resolve().parent / "config.schema.yaml"


@lru_cache(maxsize=1)
def load_schema() -> dict:
    import yaml

    return yaml.safe_load(SCHEMA.read_text())


def schema_enum(key: str) -> list:
    """The allowed values of a top-level key that takes one value or a list of them (network, loss, metric)."""
    prop = load_schema()["properties"][key]
    return prop["enum"] if "enum" in prop else prop["oneOf"][0]["enum"]


def schema_default(key: str):
    """The schema's default for a dotted config key ("train.warmup_ratio"), or dataclasses.MISSING if it has none."""
    node = load_schema()
    for part in key.split("."):
        node = node.get("properties", {}).get(part)
        if node is None:
            raise KeyError(f"{key}: not a key of {SCHEMA.name}")
    return node.get("default", MISSING)
