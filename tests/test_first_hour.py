"""A newcomer's first hour (#27): what the install and the console say."""

import os
import subprocess
import sys

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
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow/Snakefile"), "-d",
                           str(tmp_path), "-n", "--cores", "1"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode != 0 and "config error: a distribution named 'streamline' (1.3.0)" in proc.stderr
