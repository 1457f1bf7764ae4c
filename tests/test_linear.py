"""network: linear (ReplaceMe): exact least squares from a store, folded into the weights, a plain model."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny import make_data_dir, write_scores
from transformers import AutoModelForCausalLM

from streamline.adapters import get_adapter, run_with_capture
from streamline.artifacts import read_scores
from streamline.errors import StreamlineError
from streamline.extract import extract_hidden_states
from streamline.linear import (
    cosine_distance,
    cosine_estimate,
    estimate_linear,
    extract_linear_states,
    linear_block,
    normal_equations,
    relative_residual,
    solve,
    store_states,
    system,
)
from streamline.pruned import count_params
from streamline.replace import replace
from streamline.store import HiddenStore


def removal_scores(path, n=2, best=2, num_layers=6):
    """Removal scores (windows of n) whose best window starts at `best`."""
    return write_scores(path, n=n, span=n, best=best, num_layers=num_layers)


@pytest.fixture(params=["llama", "opt"])
def family_dir(request, tiny_llama_dir, tiny_opt_dir):
    return tiny_llama_dir if request.param == "llama" else tiny_opt_dir


def plain_system(store: HiddenStore) -> tuple[torch.Tensor, torch.Tensor]:
    """(M^T M, M^T R) over every real token of the store."""
    outliers, others = normal_equations(store)
    total = outliers + others
    return total.mtm, total.mtr


def test_the_estimate_recovers_a_known_map(tmp_path):
    """Targets made by a known map (h = Y + M T0): least squares in float64 finds T0."""
    rng = np.random.default_rng(0)
    k, n, t, h = 3, 6, 40, 16
    t0 = rng.normal(size=(h, h))
    store = HiddenStore.create_or_resume(
        tmp_path / "s.zarr",
        shape=(k, n, t, h),
        dtype="float32",
        codec="none",
        level=3,
        attrs={"fingerprint": "x", "layers": ["y1", "m1", 4]},
    )
    for i in range(n):
        y, m = rng.normal(size=(t, h)).astype(np.float32), rng.normal(size=(t, h)).astype(np.float32)
        target = (y.astype(np.float64) + m.astype(np.float64) @ t0).astype(np.float32)
        for state, value in enumerate((y, m, target)):
            store.write_range(state, i, value[None])
        mask = np.ones(t, dtype=np.uint8)
        mask[-5:] = 0  # padded positions hold no real token...
        if i == 0:
            garbage = target + 1000.0 * (mask[:, None] == 0)
            store.write_range(2, 0, garbage.astype(np.float32)[None])  # ...and are skipped
        store.finish_sample(i, mask)
    outliers, others = normal_equations(HiddenStore(tmp_path / "s.zarr"))
    total = outliers + others
    mtm, mtr, rr, tokens = total.mtm, total.mtr, total.rr, total.tokens
    found = solve(mtm, mtr)
    assert tokens == n * (t - 5)
    assert float(torch.linalg.norm(found - torch.from_numpy(t0)) / np.linalg.norm(t0)) < 1e-4
    assert relative_residual(mtm, mtr, rr, found) < 1e-8


def synthetic_store(
    path,
    t0: np.ndarray,
    *,
    samples: int = 24,
    tokens: int = 64,
    token_scale: float = 0.0,
    noise: float = 0.0,
    seed: int = 0,
) -> HiddenStore:
    """A states store (Y, M, h) whose targets are Y + s_t (M T0) + noise, s_t > 0 a per-token scale."""
    rng = np.random.default_rng(seed)
    h = t0.shape[0]
    store = HiddenStore.create_or_resume(
        path,
        shape=(3, samples, tokens, h),
        dtype="float32",
        codec="none",
        level=3,
        attrs={"fingerprint": "x", "layers": ["y1", "m1", 4]},
    )
    for i in range(samples):
        y, m = rng.normal(size=(tokens, h)), rng.normal(size=(tokens, h))
        scale = np.exp(token_scale * rng.normal(size=(tokens, 1)))
        target = y + scale * (m @ t0) + noise * rng.normal(size=(tokens, h))
        for state, value in enumerate((y, m, target)):
            store.write_range(state, i, value.astype(np.float32)[None])
        store.finish_sample(i, np.ones(tokens, dtype=np.uint8))
    return HiddenStore(path)


def sink_store(path: Path, sink: float, nan: bool = False) -> HiddenStore:
    """States whose first token of every sample has a `sink` x larger target (an attention sink), and whose
    targets are a known map of M plus noise, so that no map fits both kinds of token exactly."""
    rng = np.random.default_rng(1)
    k, n, t, h = 3, 8, 32, 12
    t0 = rng.normal(size=(h, h))
    store = HiddenStore.create_or_resume(
        path,
        shape=(k, n, t, h),
        dtype="float32",
        codec="none",
        level=3,
        attrs={"fingerprint": "x", "layers": [0, 1, 2]},
    )
    for i in range(n):
        y, m = rng.normal(size=(t, h)), rng.normal(size=(t, h))
        r = m @ t0 + rng.normal(size=(t, h))
        r[0] = sink * (m[0] @ rng.normal(size=(h, h)))
        if nan and i == 3:
            y[5, 2] = np.nan  # as an overflowed float16 extraction stores it
        for state, value in enumerate((y, m, y + r)):
            store.write_range(state, i, value.astype(np.float32)[None])
        store.finish_sample(i, np.ones(t, dtype=np.uint8))
    return store


def test_the_balanced_estimate_is_weighted_least_squares(tmp_path):
    """`linear.objective: balanced` solves the least squares in which the sink tokens (found by norm) and the
    others each hold their share of ||R||^2, checked against numpy's least squares on rows scaled by the square
    roots of those weights; with no outlier it is plain least squares."""
    store = sink_store(tmp_path / "s.zarr", sink=100.0)
    outliers, others = normal_equations(store)
    assert (outliers.tokens, others.tokens) == (8, 8 * 31)
    found = solve(*system(outliers, others, "balanced", 0.3))
    m, r, weight = [], [], []
    for i in range(store.num_samples):
        y, mi, target = (np.asarray(store.read(k, i), dtype=np.float64) for k in range(3))
        m.append(mi)
        r.append(target - y)
        weight += [0.3 / outliers.rr] + [0.7 / others.rr] * (len(mi) - 1)
    m, r, root = np.concatenate(m), np.concatenate(r), np.sqrt(np.array(weight))[:, None]
    expected = np.linalg.lstsq(m * root, r * root, rcond=None)[0]
    assert np.abs(found.numpy() - expected).max() < 1e-8 * np.abs(expected).max()
    plain = np.linalg.lstsq(m, r, rcond=None)[0]
    assert np.abs(plain - expected).max() > 0.1 * np.abs(expected).max()  # the weighting moved the fit
    calm_outliers, calm = normal_equations(sink_store(tmp_path / "calm.zarr", sink=1.0))
    assert calm_outliers.tokens == 0
    assert torch.equal(solve(*system(calm_outliers, calm, "balanced", 0.3)), solve(calm.mtm, calm.mtr))


def test_the_cosine_estimate_finds_a_map_that_least_squares_cannot(tmp_path):
    """Targets Y + s_t M T0 with a positive scale s_t per token (the norms of real hidden states vary by 100x): the
    cosine objective's minimum is 0 at T = c T0, which least squares misses (the large tokens dominate its fit)."""
    t0 = np.eye(16) + 0.5 * np.random.default_rng(1).normal(size=(16, 16))
    store = synthetic_store(tmp_path / "s.zarr", t0, token_scale=1.5)
    lstsq = solve(*plain_system(store))
    found, steps = cosine_estimate(store, lstsq, epochs=40, lr=1e-2, block=[2, 3])
    assert steps == 40 * 2  # 24 samples of 64 tokens: batches of 16 samples (1024 tokens) and of 8
    assert cosine_distance(store, found) < 0.2 * cosine_distance(store, lstsq)
    assert cosine_distance(store, found) < 0.005
    alignment = torch.nn.functional.cosine_similarity(found.flatten(), torch.from_numpy(t0).flatten(), dim=0)
    assert alignment > 0.995


def test_the_cosine_estimate_agrees_with_an_independent_minimiser(tmp_path):
    """On noisy targets, the streamed Adam estimate reaches the objective that scipy's L-BFGS reaches on all tokens
    at once (float64, hand-written gradient, from the same least-squares start), and `cosine_distance` is the plain
    mean of 1 - cos(m T, h - y) over the tokens, as ReplaceMe's cosine_loss."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(2)
    t0 = np.eye(8) + 0.3 * rng.normal(size=(8, 8))
    store = synthetic_store(tmp_path / "s.zarr", t0, samples=16, tokens=64, token_scale=2.0, noise=0.5, seed=3)
    m = np.concatenate([store.read(1, i).numpy() for i in range(16)]).astype(np.float64)
    r = np.concatenate([(store.read(2, i).double() - store.read(0, i).double()).numpy() for i in range(16)])

    def objective(flat):  # mean 1 - cos per token, and its gradient
        t = flat.reshape(8, 8)
        p = m @ t
        pn, rn = np.linalg.norm(p, axis=1, keepdims=True), np.linalg.norm(r, axis=1, keepdims=True)
        cos = (p * r).sum(1, keepdims=True) / (pn * rn)
        dp = -(r / (pn * rn) - cos * p / pn**2) / len(m)
        return float((1 - cos).mean()), (m.T @ dp).ravel()

    start = solve(*plain_system(store))
    best = minimize(
        objective, start.numpy().ravel(), jac=True, method="L-BFGS-B", options={"maxiter": 2000, "gtol": 1e-10}
    )
    found, _ = cosine_estimate(store, start, epochs=150, lr=3e-2, block=[2, 3])
    assert cosine_distance(store, start) == pytest.approx(objective(start.numpy().ravel())[0], rel=1e-6)
    assert best.fun < cosine_distance(store, start) - 0.01  # the cosine optimum is not the least-squares map
    assert cosine_distance(store, found) == pytest.approx(best.fun, abs=2e-4)


def test_a_cosine_estimate_that_diverges_is_one_line_naming_the_layer(tmp_path):
    store = synthetic_store(tmp_path / "s.zarr", np.eye(4), samples=2, tokens=8)
    with pytest.raises(
        StreamlineError,
        match=r"^linear: the map on layer 9's MLP output \(replacing layers 10..17\): "
        r"the cosine estimate is not finite after 1 steps",
    ):
        cosine_estimate(
            store, torch.full((4, 4), float("nan"), dtype=torch.float64), epochs=1, lr=1e-3, block=list(range(10, 18))
        )


def test_a_singular_system_is_one_line_that_suggests_the_ridge():
    mtm = torch.zeros(4, 4, dtype=torch.float64)
    mtm[0, 0] = 1.0
    with pytest.raises(StreamlineError, match=r"singular \(M\^T M has rank 1 of 4, ridge 0\); set linear.ridge > 0"):
        solve(mtm, torch.ones(4, 4, dtype=torch.float64))
    with pytest.raises(
        StreamlineError,
        match=r"^linear: the map on layer 3's MLP output \(replacing layers 4..5\): "
        r"the least-squares system is singular",
    ):
        solve(mtm, torch.ones(4, 4, dtype=torch.float64), block=[4, 5])
    assert torch.isfinite(solve(mtm, torch.ones(4, 4, dtype=torch.float64), ridge=0.1)).all()


def test_non_finite_states_stop_with_one_line_not_a_ridge_hint():
    """A NaN in one stored state makes every sum NaN: the estimate stops naming the cause, never folds NaN."""
    mtm, mtr = torch.eye(4, dtype=torch.float64), torch.ones(4, 4, dtype=torch.float64)
    mtm[2, 1] = float("nan")
    for a, b in ((mtm, mtr), (torch.eye(4, dtype=torch.float64), mtr * float("inf"))):
        with pytest.raises(StreamlineError, match="not finite .*extract with dtype: float32"):
            solve(a, b, ridge=0.1)


def test_block_zero_is_never_chosen(tmp_path):
    scores = read_scores(removal_scores(tmp_path / "s.json", best=0))
    assert linear_block(scores) != [0, 1] and linear_block(scores)[0] >= 1


def test_folded_model_equals_remove_block_and_apply_t(family_dir, tmp_path):
    data = make_data_dir(tmp_path / "data", num=12, seq_len=16)
    scores = removal_scores(tmp_path / "s.json")
    block = linear_block(read_scores(scores))
    extract_linear_states(
        family_dir, data, scores, tmp_path / "states.zarr", device="cpu", manifest=tmp_path / "states.json"
    )
    # by its manifest, as the workflow passes it: the extraction's seconds count in the recipe's time
    stats = estimate_linear(
        family_dir, tmp_path / "states.json", scores, tmp_path / "linear", log_json=tmp_path / "l.json"
    )
    assert 0 < stats.relative_residual < stats.relative_residual_of_identity <= 1.5
    assert stats.extract_seconds == json.loads((tmp_path / "states.json").read_text())["seconds"] > 0
    assert stats.seconds == pytest.approx(stats.extract_seconds + stats.estimate_seconds, abs=0.011)
    folded = AutoModelForCausalLM.from_pretrained(tmp_path / "linear").eval()  # plain transformers, no remote code
    assert folded.config.num_hidden_layers == 4
    # by hand: the original model, layer i-1's MLP output multiplied by T, layers i..i+n-1 skipped
    original = AutoModelForCausalLM.from_pretrained(family_dir).eval()
    adapter = get_adapter(original.config.model_type)
    t = solve(*plain_system(HiddenStore(tmp_path / "states.zarr"))).float()
    _, mlp = adapter.mlp_sublayer(adapter.layers(original)[block[0] - 1])
    mlp.register_forward_hook(lambda module, args, out: out @ t)
    ids = torch.randint(4, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    states = {}
    run_with_capture(adapter, original, ids, None, states.__setitem__, last=block[0])
    h = states[block[0]]
    with torch.no_grad():
        for k in range(block[-1] + 1, original.config.num_hidden_layers):
            h = adapter.run_layer(original, k, h)
        expected = adapter.head(original, h)
        got = folded(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_the_cosine_objective_on_tiny_model_states(tiny_llama_dir, tmp_path, capsys):
    """`linear --objective cosine` on a tiny model's real states: a plain folded model whose map has a lower mean
    cosine distance than the least-squares map (and, as lstsq is the least-squares optimum, a higher squared
    residual), both recorded in the estimate's log; an unknown objective is one line naming linear.objective."""
    from streamline.cli import main

    data = make_data_dir(tmp_path / "data", num=12, seq_len=16)
    scores = removal_scores(tmp_path / "s.json")
    extract_linear_states(tiny_llama_dir, data, scores, tmp_path / "states.zarr", device="cpu")
    runs = {
        obj: estimate_linear(
            tiny_llama_dir,
            tmp_path / "states.zarr",
            scores,
            tmp_path / obj,
            log_json=tmp_path / f"{obj}.json",
            objective=obj,
            epochs=20,
            lr=1e-2,
        )
        for obj in ("lstsq", "cosine")
    }
    lstsq, cosine = runs["lstsq"], runs["cosine"]
    assert (lstsq.objective, lstsq.steps, cosine.objective) == ("lstsq", 0, "cosine")
    assert cosine.steps == 20  # 12 blocks of 16 tokens: one batch of at most 1024 tokens an epoch
    assert cosine.cosine_distance < 0.95 * lstsq.cosine_distance < lstsq.cosine_distance_of_identity
    assert cosine.relative_residual > lstsq.relative_residual
    assert json.loads((tmp_path / "cosine.json").read_text())["objective"] == "cosine"
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "cosine").config.num_hidden_layers == 4
    capsys.readouterr()
    assert (
        main(
            [
                "linear",
                "--model",
                str(tiny_llama_dir),
                "--store",
                str(tmp_path / "states.zarr"),
                "--scores",
                str(scores),
                "--out",
                str(tmp_path / "l1"),
                "--log-json",
                str(tmp_path / "l1.json"),
                "--objective",
                "l1",
            ]
        )
        != 0
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1]
        == "streamline linear: error: linear.objective: unknown objective 'l1' (allowed: lstsq, balanced, cosine)"
    )
    assert not (tmp_path / "l1").exists()


def test_a_bad_objective_in_the_config_is_one_line_naming_the_key():
    from streamline.config import validate

    with pytest.raises(StreamlineError, match=r"^linear.objective: 'l1' is not"):
        validate({**yaml.safe_load(Path("config.yaml").read_text()), "linear": {"objective": "l1"}})


def test_only_the_folded_projection_differs_from_none(family_dir, tmp_path):
    data = make_data_dir(tmp_path / "data", num=8, seq_len=16)
    scores = removal_scores(tmp_path / "s.json")
    extract_linear_states(family_dir, data, scores, tmp_path / "states.zarr", device="cpu")
    estimate_linear(family_dir, tmp_path / "states.zarr", scores, tmp_path / "linear", log_json=tmp_path / "l.json")
    replace(family_dir, scores, tmp_path / "none", net="none")
    linear, none = load_file(tmp_path / "linear/model.safetensors"), load_file(tmp_path / "none/model.safetensors")
    assert linear.keys() == none.keys()
    differ = {k for k in linear if not torch.equal(linear[k], none[k])}
    proj = "mlp.down_proj" if "model.layers.1.mlp.down_proj.weight" in linear else "fc2"
    assert differ and all(k.startswith(("model.layers.1.", "model.decoder.layers.1.")) and proj in k for k in differ)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "linear")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "none")
    assert count_params(a) == count_params(b)
    info = json.loads((tmp_path / "linear/streamline.json").read_text())
    assert info["net"] == "linear" and info["replacement_layers"] == 0 and info["block"] == [2, 3]


def test_the_store_must_match_the_block(tiny_llama_dir, tmp_path):
    data = make_data_dir(tmp_path / "data", num=4, seq_len=16)
    extract_hidden_states(tiny_llama_dir, data, tmp_path / "states.zarr", keep=store_states([3, 4]), device="cpu")
    with pytest.raises(StreamlineError, match=r"estimate for block 2..3 needs \['y1', 'm1', 4\]"):
        estimate_linear(
            tiny_llama_dir,
            tmp_path / "states.zarr",
            removal_scores(tmp_path / "s.json"),
            tmp_path / "out",
            log_json=tmp_path / "l.json",
        )


def test_a_nan_state_under_balanced_stops_in_one_line_not_a_map(tmp_path):
    """A NaN in the stored states cannot hide in the balanced weighting (its norm compares false to every
    threshold): the sums go NaN and the solve stops in one line, as under lstsq."""
    store = sink_store(tmp_path / "s.zarr", sink=100.0, nan=True)
    with pytest.raises(
        StreamlineError, match=r"^linear: the map on layer 1.s MLP output .* the stored hidden states are not finite"
    ):
        solve(*system(*normal_equations(store), "balanced", 0.5), block=[2, 3])


def test_the_balanced_objective_on_tiny_model_states(tiny_llama_dir, tmp_path):
    """`linear --objective balanced` end to end: a plain folded model, the log records the outlier tokens and
    their share; a share outside (0, 1) is one line naming linear.outlier_share, in the config and the command."""
    from streamline.config import validate

    data = make_data_dir(tmp_path / "data", num=6, seq_len=16)
    scores = removal_scores(tmp_path / "s.json")
    extract_linear_states(tiny_llama_dir, data, scores, tmp_path / "states.zarr", device="cpu")
    run = lambda share, out: estimate_linear(  # noqa: E731
        tiny_llama_dir,
        tmp_path / "states.zarr",
        scores,
        tmp_path / out,
        log_json=tmp_path / f"{out}.json",
        objective="balanced",
        outlier_share=share,
    )
    stats = run(0.5, "balanced")
    assert (stats.objective, stats.outlier_share, stats.steps) == ("balanced", 0.5, 0)
    assert 0 <= stats.outlier_tokens < stats.tokens
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "balanced").config.num_hidden_layers == 4
    with pytest.raises(StreamlineError, match=r"^linear.outlier_share: 1.0 is not strictly between 0 and 1$"):
        run(1.0, "bad")
    with pytest.raises(StreamlineError, match=r"^linear.outlier_share: nan is not strictly between 0 and 1$"):
        run(float("nan"), "bad")
    assert not (tmp_path / "bad").exists()
    config = yaml.safe_load(Path("config.yaml").read_text())
    with pytest.raises(StreamlineError, match=r"^linear.outlier_share: 1.5 is"):
        validate({**config, "linear": {"objective": "balanced", "outlier_share": 1.5}})
