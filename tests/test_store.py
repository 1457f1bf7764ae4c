"""store.py on its own: the compute dtype kept bit-exactly, every codec, a sample done only once its checksum
row is written, damage found by the checksums, resume against a restart."""

import numpy as np
import pytest
import torch

from streamline.errors import StreamlineError
from streamline.store import HiddenStore, from_storage, to_storage

SHAPE = (3, 4, 8, 16)  # K states, N samples, T tokens, H hidden


def _fill(store: HiddenStore, values: np.ndarray, samples) -> None:
    for n in samples:
        for k in range(store.num_states):
            store.write_range(k, n, values[k, n : n + 1])
        store.finish_sample(n, np.ones(SHAPE[2], dtype=np.uint8))


def _new(path, dtype="bfloat16", codec="none", fingerprint="a") -> HiddenStore:
    return HiddenStore.create_or_resume(
        path,
        shape=SHAPE,
        dtype=dtype,
        codec=codec,
        level=3,
        attrs={"fingerprint": fingerprint, "layers": list(range(SHAPE[0]))},
    )


def _values(dtype: str) -> np.ndarray:
    t = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(0)) * 100
    return to_storage(t.to({"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_values_come_back_bit_exact_in_their_dtype(tmp_path, dtype):
    values = _values(dtype)
    store = _new(tmp_path / "s.zarr", dtype=dtype)
    _fill(store, values, range(SHAPE[1]))
    back = HiddenStore(tmp_path / "s.zarr").require_complete()
    for n in range(SHAPE[1]):
        got = back.read_sample(n)
        assert str(got.dtype) == f"torch.{dtype}"
        assert np.array_equal(to_storage(got), values[:, n])  # the bits, not just the values
    assert torch.equal(from_storage(values, dtype)[1, 2], back.read(1, 2))


@pytest.mark.parametrize("codec", ["none", "zstd", "blosc"])
def test_every_codec_round_trips(tmp_path, codec):
    values = _values("bfloat16")
    _fill(_new(tmp_path / "s.zarr", codec=codec), values, range(SHAPE[1]))
    store = HiddenStore(tmp_path / "s.zarr")
    assert store.attrs["codec"] == codec
    assert all(np.array_equal(to_storage(store.read_sample(n)), values[:, n]) for n in range(SHAPE[1]))


def test_a_sample_is_done_only_once_its_checksum_row_is_written(tmp_path):
    store = _new(tmp_path / "s.zarr")
    values = _values("bfloat16")
    _fill(store, values, [0, 2])
    for k in range(SHAPE[0]):  # sample 1: every chunk written, the row not yet (a kill in between)
        store.write_range(k, 1, values[k, 1:2])
    assert store.missing_samples() == [1, 3]
    with pytest.raises(StreamlineError, match="incomplete store \\(2 of 4 samples missing\\)"):
        HiddenStore(tmp_path / "s.zarr").require_complete()


def test_a_chunk_changed_on_disk_is_found_and_refused(tmp_path):
    values = _values("bfloat16")
    _fill(_new(tmp_path / "s.zarr"), values, range(SHAPE[1]))
    chunk = next(p for p in sorted((tmp_path / "s.zarr/hidden/c").rglob("*")) if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[10] ^= 0xFF  # one flipped byte: same size, still decodes
    chunk.write_bytes(bytes(data))
    store = HiddenStore(tmp_path / "s.zarr", mode="r+")
    assert store.missing_samples() == [0]
    with pytest.raises(StreamlineError, match="sample 0, hidden state 0 does not match its checksum"):
        store.read(0, 0)


def test_a_store_of_the_same_inputs_resumes_and_of_others_restarts(tmp_path):
    values = _values("bfloat16")
    _fill(_new(tmp_path / "s.zarr"), values, [0, 1])
    assert _new(tmp_path / "s.zarr").missing_samples() == [2, 3]  # resumed: two done
    assert _new(tmp_path / "s.zarr", fingerprint="b").missing_samples() == [0, 1, 2, 3]  # other inputs: afresh
