"""Fourth reliability round: tracebacks and stuck reruns that are now one line, and valid runs that failed."""

import errno
import gzip
import hashlib
import json
import logging
import os
import pickle
import subprocess
import sys

import pytest
from test_reliability import CLI, cli, one_error_line
from test_untrusted_artifacts import _killed_run, _resume, mse_setup  # noqa: F401 (a fixture)
from tiny import make_data_dir, write_scores
from workflow_utils import ROOT, snakemake, tiny_config, write_config

from streamline.atomic import exclusive
from streamline.errors import StreamlineError
from streamline.records import digest

# --- not writable -----------------------------------------------------------------------------------------------


def _no_permission(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied", "/srv/readonly/init")


def test_an_output_that_is_not_writable_is_one_line(tmp_path, monkeypatch, capsys):
    from streamline import cli as cli_module

    monkeypatch.setattr("streamline.replace.run", _no_permission)
    code = cli_module.main(["replace", "--model", "m", "--scores", "s", "--net", "none", "--out", "/srv/readonly/init"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "error: cannot write /srv/readonly/init (permission denied); make it writable" in err


def test_a_log_file_that_is_not_writable_is_one_line(tmp_path, monkeypatch, capsys):
    from streamline import cli as cli_module

    class Refused(logging.FileHandler):  # root writes anywhere: refuse the log as a read-only disk would
        def __init__(self, filename, *args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", filename)

    monkeypatch.setattr(cli_module, "KeptLogHandler", Refused)
    code = cli_module.main(["--log", str(tmp_path / "stage.log"), "score", "--store", "x", "--n", "2", "--out", "y"])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot write {tmp_path / 'stage.log'} (permission denied)" in err and "Traceback" not in err


# --- JSON artifacts nested very deep or very large -------------------------------------------------------------


@pytest.mark.parametrize("content", ["deep", "large", "bomb"])
def test_a_json_artifact_nested_deep_or_huge_is_refused_as_corrupt(tmp_path, tiny_llama_dir, content, monkeypatch):
    import streamline.atomic as atomic

    monkeypatch.setattr(atomic, "MAX_JSON_BYTES", 1 << 20)  # the same bound, at a size a test can write
    scores = tmp_path / ("s.json" if content != "bomb" else "s.json.gz")
    if content == "deep":
        scores.write_text("[" * 100_000 + "]" * 100_000)
    elif content == "large":
        scores.write_text(json.dumps({"metric": "x" * (2 << 20)}))
    else:  # 8 MB of zeros in 8 kB of gzip
        scores.write_bytes(gzip.compress(b"{" + b" " * (8 << 20) + b"}"))
    from streamline.artifacts import read_scores

    with pytest.raises(StreamlineError, match="torn|too large") as e:
        read_scores(scores)
    assert "moved" in str(e.value) and not scores.exists()


# --- a launched worker's failure is always one line -----------------------------------------------------------

SITE = {
    "raises": "import streamline.training.recipes as r\n"
    "def boom(*a, **k):\n    raise RuntimeError('a bug deep in a library')\n"
    "r.train = boom\n",
    "dies": "import os, signal, streamline.training.recipes as r\n"
    "def die(*a, **k):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    "r.train = die\n",
}


@pytest.mark.parametrize("failure", ["raises", "dies"])
def test_any_failure_of_a_launched_worker_is_one_line_with_its_log(failure, tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site/sitecustomize.py").write_text(  # runs in every process, the workers included
        "import os\nif os.environ.get('LOCAL_RANK') is not None:\n"
        + "".join("    " + line + "\n" for line in SITE[failure].splitlines())
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])}
    log = tmp_path / "train.log"
    proc = subprocess.run(
        [
            *CLI,
            "launch",
            "--config",
            str(ROOT / "configs/accelerate/ddp.yaml"),
            "--num-processes",
            "1",
            "--",
            "--log",
            str(log),
            "train",
            "--loss",
            "llm",
            "--init",
            str(tmp_path),
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--log-json",
            str(tmp_path / "l"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    line = one_error_line(proc)
    assert "ChildFailedError" not in proc.stderr and "Traceback" not in proc.stderr
    assert str(log) in line
    if failure == "raises":
        assert "streamline train: error: RuntimeError: a bug deep in a library" in line
        assert "Traceback" in log.read_text() and "a bug deep in a library" in log.read_text()
    else:
        assert line.startswith("streamline launch: error: the training processes failed")
        assert "the launcher's report" in log.read_text()  # kept in the log, not shown


# --- fp16 on a CPU, a malformed accelerate config: known before any job --------------------------------------


def test_fp16_whole_model_training_without_a_gpu_is_refused_before_any_job(tmp_path, tiny_llama_dir, text_corpus):
    write_config(tmp_path, tiny_config(tiny_llama_dir, text_corpus, dtype="float16", loss="llm"))
    proc = snakemake(tmp_path, "--cores", "1", check=False)
    assert (
        proc.returncode != 0
        and "config error: dtype: float16 trains the llm and kd losses only on a GPU" in proc.stderr
    )
    assert not (tmp_path / "resources/models").exists()  # before any job
    assert snakemake(tmp_path, "-n", check=False).returncode == 0  # a dry run (a login node, a laptop) may plan it
    # and the launcher refuses it too, for a command run by hand
    line = one_error_line(
        cli(
            "launch",
            "--config",
            ROOT / "configs/accelerate/ddp.yaml",
            "--mixed-precision",
            "fp16",
            "--",
            "train",
            "--loss",
            "llm",
        )
    )
    assert "float16" in line and "only on a GPU" in line


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("distributed_type: NOT_A_TYPE\n", "not a valid accelerate config"),
        ("distributed_type: MULTI_GPU\nnum_procesess: 2\n", "unknown keys"),
        ("distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: two}\n", "zero_stage is 'two'"),
    ],
)
def test_a_malformed_accelerate_config_is_refused_by_a_dry_run(
    tmp_path, tiny_llama_dir, text_corpus, yaml_text, message
):
    (tmp_path / "acc.yaml").write_text(yaml_text)
    write_config(
        tmp_path,
        tiny_config(tiny_llama_dir, text_corpus, loss="llm", **{"llm.accelerate_config": str(tmp_path / "acc.yaml")}),
    )
    proc = snakemake(tmp_path, "-n", check=False)
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert proc.returncode != 0 and len(errors) == 1 and "config error: llm.accelerate_config: " in errors[0]
    assert message in errors[0]


def test_nested_config_values_from_the_command_line_are_coerced(tmp_path, tiny_llama_dir, text_corpus):
    write_config(tmp_path, tiny_config(tiny_llama_dir, text_corpus))
    proc = snakemake(
        tmp_path,
        "-n",
        "--config",
        "eval={offline: true, limit: null, batch_size: 2}",
        "export={gguf: none}",
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


# --- fp16: a step the loss scaler skips ------------------------------------------------------------------------


def test_a_step_skipped_by_the_fp16_loss_scaler_is_logged_not_fatal(tmp_path, tiny_llama_dir, monkeypatch):
    """A forced overflow: the first step's gradients are inf and the scaler skips it, as in any fp16 run's
    first steps. The run goes on, checkpoints and logs it as skipped."""
    import accelerate
    import torch

    from streamline.replace import replace
    from streamline.training.recipes import train
    from streamline.training.settings import TrainSettings

    data = make_data_dir(tmp_path / "data", num=12, seq_len=16)
    replace(
        tiny_llama_dir,
        write_scores(tmp_path / "s.json", best=1, n=2, span=3),
        tmp_path / "init",
        net="transformer",
        dtype="float16",
    )
    calls = {"clip": 0}
    original_clip = accelerate.Accelerator.clip_grad_norm_

    def clip(self, *args, **kwargs):
        calls["clip"] += 1
        return torch.tensor(float("inf")) if calls["clip"] == 1 else original_clip(self, *args, **kwargs)

    monkeypatch.setattr(accelerate.Accelerator, "clip_grad_norm_", clip)
    monkeypatch.setattr(accelerate.Accelerator, "optimizer_step_was_skipped", property(lambda self: calls["clip"] == 1))
    settings = TrainSettings(
        batch_size=2,
        gradient_accumulation_step=1,
        epochs=1,
        lr=1e-3,
        min_lr=1e-4,
        device="cpu",
        checkpoint_every=1,
        val_every=3,
    )
    result = train(
        "llm",
        tmp_path / "init",
        tmp_path / "out",
        tmp_path / "log.json",
        settings,
        data_dir=data,
        checkpoint_dir=tmp_path / "ck",
    )
    assert result.mixed_precision == "fp16" and result.skipped_steps == 1
    steps = json.loads((tmp_path / "log.json").read_text())["steps"]
    assert steps[0]["skipped"] is True and steps[0]["grad_norm"] is None
    assert all(s["skipped"] is False and s["grad_norm"] is not None for s in steps[1:])


# --- a random state that cannot be loaded -----------------------------------------------------------------------


def test_a_random_state_that_cannot_be_loaded_sets_the_checkpoint_aside(mse_setup, tmp_path):
    root, args = mse_setup
    ck = _killed_run(root, args, "rng")
    progress = json.loads((ck / "progress.json").read_text())
    rng = ck / progress["state_dir"] / "random_states_0.pkl"
    assert rng.is_file()
    rng.write_bytes(pickle.dumps({"not": "a random state"}))  # loads, but holds none: accelerate would carry on
    progress["files"][str(rng.relative_to(ck))] = hashlib.sha256(rng.read_bytes()).hexdigest()  # forged,
    progress.pop("digest")  # and re-signed
    (ck / "progress.json").write_text(json.dumps({**progress, "digest": digest(progress)}))
    line = one_error_line(_resume(root, args, "rng"))
    assert "cannot be loaded" in line and "set aside" in line
    assert not ck.exists() and list((root / "rng").glob("ck.unreadable-*"))
    proc = _resume(root, args, "rng")  # the rerun starts afresh, never stuck
    assert proc.returncode == 0, proc.stderr[-2000:]


# --- a second job on a running job's outputs ---------------------------------------------------------------------


def test_a_second_job_on_a_locked_checkpoint_leaves_the_running_jobs_log(tmp_path, tiny_llama_dir):
    log = tmp_path / "train.log"
    log.write_text("12:00:00 streamline: step 700/1000 of the running job\n")
    data = make_data_dir(tmp_path / "data", num=6, seq_len=16)
    replace_proc = cli(
        "replace",
        "--model",
        tiny_llama_dir,
        "--net",
        "transformer",
        "--out",
        tmp_path / "init",
        "--scores",
        write_scores(tmp_path / "s.json", best=1, n=2, span=3),
    )
    assert replace_proc.returncode == 0, replace_proc.stderr
    ck = tmp_path / "ck"
    ck.mkdir()
    with exclusive(ck):  # the running job holds its checkpoint dir
        proc = cli(
            "--log",
            log,
            "train",
            "--loss",
            "llm",
            "--init",
            tmp_path / "init",
            "--data",
            data,
            "--out",
            tmp_path / "out",
            "--log-json",
            tmp_path / "l.json",
            "--checkpoint-dir",
            ck,
            "--device",
            "cpu",
            "--batch-size",
            2,
            "--gradient-accumulation-step",
            1,
            "--epochs",
            1,
            "--lr",
            "1e-3",
            "--min-lr",
            "1e-4",
        )
    assert "being written by another running process" in one_error_line(proc)
    assert log.read_text().startswith("12:00:00 streamline: step 700/1000 of the running job\n")


def test_a_running_jobs_log_survives_snakemake_deleting_it(tmp_path):
    """`snakemake --nolock -f` deletes the log of the job it starts again before that job runs, while the first
    job is still writing it; the second job's one line lands in a new file. The first job carries its log over."""
    log = tmp_path / "train.log"
    script = (
        "import logging, sys, time\nfrom streamline.cli import setup_logging\n"
        f"setup_logging({str(log)!r})\nlog = logging.getLogger('streamline')\n"
        "log.info('step 1 of the running job')\n"
        "while not __import__('os').path.exists(sys.argv[1]): time.sleep(0.05)\n"
        "log.info('step 2 of the running job')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "go")])
    while "step 1" not in (log.read_text() if log.exists() else ""):
        pass
    log.unlink()  # what Snakemake does to a job's log before running it
    log.write_text("streamline train: error: the checkpoint is being written by another running process\n")
    (tmp_path / "go").touch()
    assert proc.wait(timeout=60) == 0
    text = log.read_text()
    assert "another running process" in text and "step 1 of the running job" in text
    assert "step 2 of the running job" in text
