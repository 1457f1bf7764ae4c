"""The presets' config.json shapes, shipped as numbers (no weights): the rehearsal models are built from them
(`model_name: random://llama-3.1-8b?layers=6`, rehearse.py), and the resource plan reads them for a hub id or
the demo's wheel before anything is downloaded.

Each `<preset>.json` is the model's public config.json; `_hub_id` (and `_source`, for the demo) name the
model_name it stands for.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from ..errors import StreamlineError

SHAPES_DIR = Path(__file__).resolve().parent


def presets() -> list[str]:
    return sorted(p.stem for p in SHAPES_DIR.glob("*.json"))


@lru_cache(maxsize=None)
def _read(name: str) -> dict:
    return json.loads((SHAPES_DIR / f"{name}.json").read_text())


def preset_config(name: str, key: str = "model_name") -> dict:
    """A preset's config.json fields (without the `_` bookkeeping)."""
    if name not in presets():
        raise StreamlineError(f"{key}: no preset shapes named {name!r} (shipped: {', '.join(presets())})")
    return {k: v for k, v in _read(name).items() if not k.startswith("_")}


def preset_for(model_name: str) -> str | None:
    """The preset whose shapes a hub id (or the demo's pypi:// spec) has, if one is shipped."""
    for name in presets():
        if model_name in (_read(name).get("_hub_id"), _read(name).get("_source")):
            return name
    return None
