"""The resource plan (streamline/plan.py) against what the stages really do on the tiny models, the rehearsal
models (streamline/rehearse.py), and the refusals of plans that cannot fit."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import make_data_dir, tiny_model_config, write_scores
from transformers import AutoModelForCausalLM, AutoTokenizer
from workflow_utils import ROOT

from streamline import plan
from streamline.errors import StreamlineError
from streamline.plan import Model, extraction_need, gguf_export_need, model_write_need
from streamline.rehearse import parse_random_spec, write_random_model
from streamline.shapes import preset_config, presets

TP = plan.cpu_throughput("float32")


def payload(model_dir: Path) -> int:
    """Bytes of the tensors in a model dir's safetensors files (their headers excluded)."""
    from safetensors import safe_open

    total = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with safe_open(f, framework="pt") as st:
            for key in st.keys():
                tensor = st.get_slice(key)
                total += int(np.prod(tensor.get_shape())) * {"F32": 4, "BF16": 2, "F16": 2}[tensor.get_dtype()]
    return total


@pytest.mark.parametrize("name", presets())
def test_sizes_count_every_parameter_of_each_preset(name):
    """The adapters' arithmetic equals the parameters transformers builds for the preset's shapes (2 layers)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    fields = preset_config(name)
    config = CONFIG_MAPPING[fields["model_type"]].from_dict({**fields, "num_hidden_layers": 2})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    m = Model.of(fields, "bfloat16", name)
    assert m.params(2) == sum(p.numel() for p in model.parameters())


def test_llama_3_1_8b_sizes_are_the_published_ones():
    m = Model.of(preset_config("llama-3.1-8b"), "bfloat16", "")
    assert m.sizes.layer_params == 218_112_000 and m.sizes.embed_params == m.sizes.head_params == 525_336_576
    assert round(m.params() / 1e9, 2) == 8.03
    # 33 states x 50 x 2048 tokens x 4096 x 2 bytes: the paper's calibration, 27.7 GB
    need = extraction_need(m, samples=50, states=33, layers_run=32, seq_len=2048, batch=1, device="cuda", tp=TP)
    assert abs(need.disk - 27.68e9) < 0.01e9


@pytest.fixture(scope="module")
def tiny_random_dir(tmp_path_factory):
    """A rehearsal model written from a tiny config.json (bf16, 4 of its 6 layers)."""
    cfg = tiny_model_config("llama", vocab_size=512).to_dict()
    cfg["torch_dtype"] = "bfloat16"
    path = tmp_path_factory.mktemp("shapes") / "config.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path_factory.mktemp("random") / "model"
    out.mkdir()
    write_random_model(parse_random_spec(f"random://{path}?layers=4"), out)
    return out


def test_rehearsal_model_has_the_shapes_asked_for_and_a_tokenizer_that_fits(tiny_random_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_random_dir)
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 32 and model.dtype == torch.bfloat16
    tok = AutoTokenizer.from_pretrained(tiny_random_dir)
    ids = tok("any text at all: ünïcode, digits 123", add_special_tokens=False)["input_ids"]
    assert 256 <= ids[3] < 282  # " t": one of its merges
    assert max(ids) < 282 <= tok.eos_token_id < 285 <= model.config.vocab_size
    assert tok.decode(ids) == "any text at all: ünïcode, digits 123"
    norms = [p for n, p in model.named_parameters() if n.endswith("norm.weight")]
    assert all(torch.equal(p, torch.ones_like(p)) for p in norms)
    w = model.model.layers[0].mlp.up_proj.weight.float()
    assert abs(w.std().item() - 0.02) < 0.004  # the config's initializer_range


def test_rehearsal_model_is_the_same_for_the_same_seed(tiny_random_dir, tmp_path):
    from safetensors.torch import load_file

    cfg = json.loads((tiny_random_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 6, "torch_dtype": "bfloat16"}))
    again = tmp_path / "again"
    again.mkdir()
    write_random_model(parse_random_spec(f"random://{tmp_path / 'config.json'}?layers=4"), again)
    a = {k: v for f in sorted(tiny_random_dir.glob("*.safetensors")) for k, v in load_file(f).items()}
    b = {k: v for f in sorted(again.glob("*.safetensors")) for k, v in load_file(f).items()}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "spec, words",
    [
        ("random://llama-9b", "preset"),
        ("random://llama-3.1-8b?layers=40", "deeper"),
        ("random://llama-3.1-8b?layers=x", "integers"),
        ("random://llama-3.1-8b?depth=2", "unknown option"),
    ],
)
def test_a_bad_rehearsal_spec_is_one_line_naming_model_name(spec, words):
    from streamline.config import check_source

    with pytest.raises(StreamlineError, match="model_name") as e:
        check_source("model_name", spec)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_random_is_no_corpus():
    from streamline.config import check_source

    with pytest.raises(StreamlineError, match="data.source"):
        check_source("data.source", "random://llama-3.1-8b")


def test_download_writes_the_rehearsal_model_and_the_plan_has_its_bytes(tmp_path):
    from streamline.download import download_model, model_slug

    spec = "random://llama-3.1-8b?layers=2"
    assert model_slug(spec) == "llama-3.1-8b-random-L2"
    m = Model.of(preset_config("llama-3.1-8b") | {"num_hidden_layers": 2}, "bfloat16", "")
    need = plan.download_need(m, "random", TP)
    # a 2-layer 8B-wide model is 1.49B parameters: too slow to draw here; the plan's bytes are its tensors' bytes
    assert need.disk == 2 * m.params(2) == 2 * 1_486_901_248
    assert callable(download_model)


def chunk_bytes(store: Path, array: str) -> int:
    """Bytes of an array's chunk files (its zarr.json metadata excluded)."""
    return sum(f.stat().st_size for f in (store / array / "c").rglob("*") if f.is_file())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_store_bytes_are_exactly_the_plan(tiny_llama_dir, tmp_path, dtype):
    from streamline.extract import extract_hidden_states

    data = make_data_dir(tmp_path / "data", num=5, seq_len=16)
    extract_hidden_states(tiny_llama_dir, data, tmp_path / "c.zarr", dtype=dtype, batch_size=2, device="cpu")
    m = Model.from_dir(tiny_llama_dir, dtype)
    need = extraction_need(m, samples=5, states=7, layers_run=6, seq_len=16, batch=2, device="cpu", tp=TP)
    store = tmp_path / "c.zarr"
    hidden, mask, sums = (chunk_bytes(store, a) for a in ("hidden", "attention_mask", "checksum"))
    assert hidden == 5 * 7 * 16 * 32 * (4 if dtype == "float32" else 2) and mask == 5 * 16  # raw: no codec
    assert hidden + mask + 5 * 8 * 8 == need.disk
    assert abs(sums - 5 * 8 * 8) <= 0.1 * 5 * 8 * 8  # the checksum table is zarr's default zstd: a few bytes either way


def test_model_dir_bytes_are_the_plan(tiny_llama_dir, tmp_path):
    from streamline.replace import replace

    write_scores(tmp_path / "scores.json", n=2, span=3, best=1)
    replace(tiny_llama_dir, tmp_path / "scores.json", tmp_path / "out", net="transformer", dtype="bfloat16")
    m = Model.from_dir(tiny_llama_dir, "bfloat16")
    need = model_write_need(m, m.pruned_params(2, "transformer"), TP)
    assert payload(tmp_path / "out") == need.disk  # exactly; the files add their small JSON headers
    size = sum(f.stat().st_size for f in (tmp_path / "out").glob("*.safetensors"))
    assert need.disk < size < need.disk + 64 * 1024


def test_gguf_bytes_are_the_plan_within_the_tokenizer(tiny_llama_dir, tmp_path):
    from streamline.gguf_export import export_gguf

    export_gguf(tiny_llama_dir, tmp_path / "m.gguf", "f16")
    m = Model.from_dir(tiny_llama_dir, "float32")
    need = gguf_export_need(m, params=m.params(), outtype="f16", tp=TP)
    size = (tmp_path / "m.gguf").stat().st_size
    # 2-D weights in f16; the norms stay f32 (6 layers x 2 x 32 + 32 values); the header holds the tokenizer
    assert need.disk + (6 * 2 * 32 + 32) * 2 < size < need.disk + 64 * 1024


def peak_rss_of(args: list[str]) -> int:
    """Peak RSS (bytes) of `streamline ARGS`, run under a fresh wrapper process whose only child it is (this
    process's RUSAGE_CHILDREN holds the largest of every child the test session ran before)."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "proc = subprocess.run([sys.executable, '-m', 'streamline.cli', *sys.argv[1:]], capture_output=True, "
        "text=True)\n"
        "sys.stderr.write(proc.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(proc.returncode)"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.split()[-1]) * 1024


def test_stage_memory_is_the_plan_within_25_percent(tiny_llama_dir, tmp_path):
    """The plan's RAM for extraction, its largest tiny stage (the libraries' resident memory dominates at this size;
    the rehearsal at 8B widths checks the weights and activations: README)."""
    data = make_data_dir(tmp_path / "data", num=8, seq_len=16)
    rss = peak_rss_of(
        [
            "extract-calibration",
            "--model",
            str(tiny_llama_dir),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "c.zarr"),
            "--batch-size",
            "4",
            "--device",
            "cpu",
        ]
    )
    need = extraction_need(
        Model.from_dir(tiny_llama_dir, "float32"),
        samples=8,
        states=7,
        layers_run=6,
        seq_len=16,
        batch=4,
        device="cpu",
        tp=TP,
    )
    assert 0.75 * need.ram <= rss <= 1.25 * need.ram, (rss / 1e9, need.ram / 1e9)


# --- refusals ------------------------------------------------------------------------------------------


def preset_plan(**overrides):
    return plan.plan_for_config(ROOT / "configs/llama-3.1-8b.yaml", overrides, device="cuda", root="/nonexistent")


def test_a_336_gb_pair_store_on_a_100_gb_disk_is_refused_naming_the_key():
    p = preset_plan(loss="mse")
    pairs = next(j for j in p.jobs if j.rule == "extract_pairs")
    assert 330e9 < pairs.need.disk < 340e9  # 2 x (10,000 + 64) x 2048 x 4096 x 2 bytes
    with pytest.raises(StreamlineError) as e:
        plan.check_fits(p, ram=1e12, disk=100e9)
    line = str(e.value)
    assert line.startswith("train_num_data:") and "extract_pairs" in line and "100.0 GB free" in line
    assert "\n" not in line


def test_an_8b_model_on_a_16_gb_machine_is_refused_naming_the_key():
    p = plan.plan_for_config(
        ROOT / "configs/llama-3.1-8b.yaml", {"llm": {"num_processes": 1}}, device="cpu", root="/nonexistent"
    )
    with pytest.raises(StreamlineError) as e:
        plan.check_fits(p, ram=16e9, disk=1e15)
    line = str(e.value)
    assert "needs" in line and "16.0 GB" in line and line.split(":")[0] in line.split("change ")[1]


def test_a_stage_stops_in_one_line_when_its_plan_is_above_what_is_free(tmp_path, monkeypatch):
    monkeypatch.setattr(plan, "available_ram", lambda: 1e9)
    monkeypatch.delenv(plan.SKIP_CHECK, raising=False)
    with pytest.raises(StreamlineError, match=r"^replace: needs 3.00 GB of RAM and 1.00 GB is available"):
        plan.require("replace", plan.Need(ram=3e9, disk=1), tmp_path)
    with pytest.raises(StreamlineError, match=r"^replace: needs .* GB of disk"):
        plan.require("replace", plan.Need(ram=1, disk=1e18), tmp_path)
    monkeypatch.setenv(plan.SKIP_CHECK, "1")
    plan.require("replace", plan.Need(ram=3e9, disk=1e18), tmp_path)


def test_plan_command_prints_every_rule_of_the_preset(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamline.cli",
            "plan",
            "--configfile",
            str(ROOT / "configs/llama-3.1-8b.yaml"),
            "--device",
            "cuda",
            "--json",
            str(tmp_path / "p.json"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    for rule in (
        "download_model",
        "prepare_data",
        "extract_calibration",
        "score",
        "replace",
        "train_end_to_end",
        "evaluate_baseline",
        "evaluate_variant",
        "stability",
        "report",
        "total",
    ):
        assert rule in proc.stdout
    assert "989 TFLOPS" in proc.stdout and "shipped shapes of llama-3.1-8b" in proc.stdout
    jobs = json.loads((tmp_path / "p.json").read_text())["jobs"]
    calibration = next(j for j in jobs if j["rule"] == "extract_calibration")
    assert calibration["gpus"] == 1 and calibration["gpu_bytes"] > 16e9 and calibration["disk_bytes"] > 27e9


@pytest.mark.slow
def test_a_rehearsal_model_runs_in_llama_cpp_as_in_transformers(tiny_random_dir, tmp_path):
    """Its tokenizer has merges (llama.cpp refuses a BPE without), and the GGUF computes what the HF model does."""
    pytest.importorskip("llama_cpp")
    from streamline.gguf_check import gguf_check
    from streamline.gguf_export import export_gguf

    export_gguf(tiny_random_dir, tmp_path / "m.gguf", "f16")
    data = make_data_dir(tmp_path / "data", num=4, seq_len=16, vocab=282)
    result = gguf_check(tmp_path / "m.gguf", data, tmp_path / "g.json", hf_model=tiny_random_dir, threads=1)
    assert abs(result.gguf_ppl / result.hf_ppl - 1) < 0.01


def test_rules_ask_for_the_plan_and_a_plan_that_does_not_fit_stops_before_any_job(
    tmp_path, tiny_llama_dir, text_corpus
):
    from workflow_utils import snakemake, tiny_config, write_config

    workdir = tmp_path / "wf"
    workdir.mkdir()
    write_config(workdir, tiny_config(tiny_llama_dir, text_corpus))
    dry = snakemake(workdir, "-n")
    text = dry.stdout + dry.stderr
    block = text.split("rule extract_calibration:", 1)[1].split("\n\n", 1)[0]
    planned = next(
        j.need
        for j in plan.plan_for_config(workdir / "config.yaml", device="cpu", root=workdir).jobs
        if j.rule == "extract_calibration"
    ).resources()
    assert f"mem_mb={planned['mem_mb']}," in block and f"disk_mb={planned['disk_mb']}," in block, block

    proc = snakemake(workdir, "--resources", "mem_mb=200", check=False)
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("plan error: ") and "needs" in line and "0.2 GB" in line and "change " in line, line
    assert not (workdir / "resources/models").exists() and not (workdir / "results").exists()  # no job ran


def test_each_stage_computes_its_own_need_from_its_arguments(tiny_llama_dir, tmp_path):
    """The check a stage makes when it starts (cli.main -> plan.check_stage) finds a need for every big stage."""
    from streamline.cli import parse_args
    from streamline.replace import replace

    data = make_data_dir(tmp_path / "data", num=4, seq_len=16)
    write_scores(tmp_path / "scores.json", n=2, span=3, best=1)
    replace(tiny_llama_dir, tmp_path / "scores.json", tmp_path / "init", net="transformer")
    m, init = str(tiny_llama_dir), str(tmp_path / "init")
    commands = {
        "extract-calibration": ["--model", m, "--data", str(data), "--out", str(tmp_path / "c.zarr")],
        "extract-pairs": [
            "--model",
            m,
            "--data",
            str(data),
            "--out",
            str(tmp_path / "p.zarr"),
            "--scores",
            str(tmp_path / "scores.json"),
        ],
        "replace": [
            "--model",
            m,
            "--scores",
            str(tmp_path / "scores.json"),
            "--net",
            "transformer",
            "--out",
            str(tmp_path / "r"),
        ],
        "train": [
            "--loss",
            "kd",
            "--init",
            init,
            "--data",
            str(data),
            "--out",
            str(tmp_path / "t"),
            "--log-json",
            str(tmp_path / "t.json"),
        ],
        "evaluate": [
            "--model",
            init,
            "--original",
            m,
            "--out",
            str(tmp_path / "e.json"),
            "--samples",
            str(tmp_path / "s.json"),
            "--ppl-data",
            str(data),
            "--tasks",
            "arc_easy",
            "--limit",
            "4",
        ],
        "export-gguf": ["--model", m, "--out", str(tmp_path / "m.gguf")],
    }
    for command, args in commands.items():
        found = plan.stage_need(command, parse_args([command, *args]))
        assert found is not None, command
        need, out = found
        assert need.ram > plan.BASE_RSS["store"] and need.disk > 0 and str(out) == args[args.index("--out") + 1]


def test_a_stage_started_with_too_little_free_ram_stops_before_writing(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    from streamline.cli import main

    monkeypatch.delenv(plan.SKIP_CHECK, raising=False)
    monkeypatch.setattr(plan, "available_ram", lambda: 0.1e9)
    write_scores(tmp_path / "scores.json", n=2, span=3, best=1)
    code = main(
        [
            "replace",
            "--model",
            str(tiny_llama_dir),
            "--scores",
            str(tmp_path / "scores.json"),
            "--net",
            "transformer",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and line.startswith("streamline replace: error: needs ") and "0.10 GB is available" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", [{"memory": float("nan")}, {"disk_write": 0}, {"matmul_flops": {"float32": -1.0}}])
def test_a_corrupt_throughput_cache_falls_back_to_the_defaults(tmp_path, bad):
    """`plan --measure`'s cache edited to NaN, zero or a negative rate: the plan keeps the documented defaults
    (a NaN rate would make every time NaN, and Slurm's runtime request with it)."""
    good = {"cpus": plan._cpus(), "matmul_flops": {"float32": 2e11}, "memory": 2e10, "disk_write": 2e9}
    cache = tmp_path / "throughput.json"
    cache.write_text(json.dumps(good))
    assert plan.cpu_throughput("float32", cache).memory == 2e10
    cache.write_text(json.dumps({**good, **bad}))
    tp = plan.cpu_throughput("float32", cache)
    assert (tp.flops, tp.memory, tp.disk_write) == (
        plan.CPU_DEFAULTS["matmul_flops"]["float32"],
        plan.CPU_DEFAULTS["memory"],
        plan.CPU_DEFAULTS["disk_write"],
    )
