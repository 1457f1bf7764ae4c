"""Block scores: the paper's cosine over real tokens, angular distance, the best block, errors."""

import json
import math

import pytest
import torch

from streamline.artifacts import read_scores
from streamline.errors import StreamlineError
from streamline.extract import extract_hidden_states
from streamline.records import digest, write_record
from streamline.score import score
from streamline.store import HiddenStore


@pytest.fixture
def calib_store(tiny_llama_dir, data_dir, tmp_path):
    extract_hidden_states(tiny_llama_dir, data_dir, tmp_path / "c.zarr", device="cpu", manifest=tmp_path / "c.json")
    return tmp_path / "c.zarr"


def manual_scores(store_path, span, fn):
    store = HiddenStore(store_path)
    total, count = None, 0
    for n in range(store.num_samples):
        hs, valid = store.read_sample(n).double(), store.read_mask(n)
        vals = []
        for i in range(hs.shape[0] - span):
            a, b = hs[i][valid], hs[i + span][valid]
            cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
            vals.append(fn(cos).sum())
        vals = torch.stack(vals)
        total = vals if total is None else total + vals
        count += int(valid.sum())
    return (total / count).tolist()


def test_cosine_scores_match_manual_and_pick_argmax(calib_store, tmp_path):
    result = score(calib_store, 2, tmp_path / "s.json", tmp_path / "s.png")
    expected = manual_scores(calib_store, 3, lambda c: c)
    got = [s.score for s in result.scores]
    assert got == pytest.approx(expected, abs=1e-5)
    best = max(range(len(expected)), key=expected.__getitem__)
    assert result.best_start == best and result.block == [best, best + 1, best + 2]
    assert result.removed_layers == [best + 1, best + 2] and result.layers_after == 4
    assert read_scores(tmp_path / "s.json") == result and json.loads((tmp_path / "s.json").read_text()) == {
        **result.to_json(),
        "digest": digest(result.to_json()),
    }
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_padding_is_excluded(calib_store, tmp_path):
    store = HiddenStore(calib_store, mode="r+")
    # Garbage in padded positions of sample 0 must not move the scores.
    before = score(calib_store, 1, tmp_path / "a.json").scores
    valid = store.read_mask(0)
    assert not valid.all()
    for k in range(store.hidden.shape[0]):
        h = store.read(k, 0).clone()
        h[~valid] = torch.randn_like(h[~valid]) * 100
        store.write_range(k, 0, h.numpy()[None])
    store.finish_sample(0, store.mask[0])  # a legitimate rewrite records new checksums
    after = score(calib_store, 1, tmp_path / "b.json").scores
    assert [s.score for s in after] == pytest.approx([s.score for s in before], abs=1e-6)


def test_angular_distance_picks_argmin(calib_store, tmp_path):
    result = score(calib_store, 1, tmp_path / "s.json", metric="angular", span=1)
    expected = manual_scores(calib_store, 1, lambda c: torch.arccos(c.clamp(-1, 1)) / math.pi)
    assert [s.score for s in result.scores] == pytest.approx(expected, abs=1e-5)
    assert result.best_start == min(range(len(expected)), key=expected.__getitem__)
    assert result.block == result.removed_layers == [result.best_start]


@pytest.mark.parametrize("n", [0, 6, 7])
def test_n_out_of_range_is_one_line(calib_store, tmp_path, n):
    with pytest.raises(StreamlineError, match=r"^layer_intervals: .* out of range .* 6-layer .*allowed: 1\.\.5\)$"):
        score(calib_store, n, tmp_path / "s.json")


def test_unknown_metric(calib_store, tmp_path):
    with pytest.raises(StreamlineError, match="metric: unknown metric 'l2'"):
        score(calib_store, 1, tmp_path / "s.json", metric="l2")


def test_the_store_is_found_from_its_manifest(calib_store, tmp_path, monkeypatch):
    """The workflow passes the manifest (the file its rule declares), never a rebuilt store path."""
    moved = tmp_path / "elsewhere" / "calibration.zarr"
    moved.parent.mkdir()
    calib_store.rename(moved)  # the manifest says where the store is; a path rebuilt from names would miss it
    manifest = json.loads((tmp_path / "c.json").read_text())
    write_record(tmp_path / "c.json", {**manifest, "store": str(moved)})  # as if extracted there
    assert score(tmp_path / "c.json", 2, tmp_path / "a.json").scores == score(moved, 2, tmp_path / "b.json").scores


def test_a_file_that_is_not_a_store_manifest_is_one_line(tmp_path):
    write_record(tmp_path / "scores.json", {"block": [1, 2]})
    with pytest.raises(StreamlineError, match=r"scores.json: the store manifest is incomplete \(no valid 'store'\)"):
        score(tmp_path / "scores.json", 2, tmp_path / "s.json")
    with pytest.raises(StreamlineError, match="no such store manifest"):
        score(tmp_path / "nothing.json", 2, tmp_path / "s.json")
    (tmp_path / "torn.json").write_text('{"store": "c.za')
    with pytest.raises(StreamlineError, match=r"torn.json: the store manifest is torn \(not valid JSON\)"):
        score(tmp_path / "torn.json", 2, tmp_path / "s.json")
