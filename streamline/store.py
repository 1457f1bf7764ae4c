"""Hidden-state stores in Zarr v3: preallocated, one chunk per (layer, sample), bit-exact dtype, checksummed.

zarr has no bfloat16, so bf16 is kept as its uint16 bits with the logical dtype in the attributes.

A sample is done only when its checksum row exists: the CRC32 of each of its K hidden-state chunks
and of its mask, as written, stored after all of them. Zarr's LocalStore writes each chunk to a temp
file and renames it (zarr >= 3.1.3), so a chunk is never torn by a kill; the checksums catch the rest
(a deleted chunk, which zarr would read back as zeros, a truncated or overwritten one). Resuming
verifies every done sample and recomputes those that fail; readers verify every chunk they read and
refuse an incomplete store, so a bad chunk stops the run with one line instead of feeding it zeros.
"""

from __future__ import annotations

import json
import logging
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from .errors import StreamlineError
from .manifests import StoreManifest, read_store_manifest
from .ownership import clear, mark, require_owned, target

log = logging.getLogger(__name__)

STORAGE_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "uint16"}
FORMAT = 2  # 2: with the checksum array (stores of format 1 are started afresh)


def _manifest_entry(path: Path, split: str | None) -> StoreManifest:
    if not path.is_file():
        raise StreamlineError(f"{path}: no such store manifest (run the extraction that writes it)")
    return read_store_manifest(path, split)


def store_dir(path: str | Path, split: str | None = None) -> Path:
    """A store named by its directory or by its manifest (`split`: train or val of a pair store).

    The workflow passes the manifest: it is the file the rule declares, written only once the store is
    complete, and it records where the store is, so no rule rebuilds a store's path.
    """
    path = Path(path)
    if path.suffix != ".json":
        return path / split if split else path
    return Path(_manifest_entry(path, split).store)


def open_store(path: str | Path, split: str | None = None) -> "HiddenStore":
    """A complete store, by its directory or its manifest; given the manifest, the store must hold the shape
    the manifest records (an edited zarr.json would otherwise pass as a smaller store)."""
    path = Path(path)
    if path.suffix != ".json":
        return HiddenStore(store_dir(path, split)).require_complete()
    entry = _manifest_entry(path, split)
    return HiddenStore(entry.store).require_complete().check_shape(entry.shape, path)


def compressors(codec: str, level: int = 3):
    if codec == "none":
        return None
    if codec == "zstd":
        return [ZstdCodec(level=level)]
    if codec == "blosc":  # byte-shuffled zstd: the better choice for bf16/fp16 bits
        return [BloscCodec(cname="zstd", clevel=level, shuffle="bitshuffle")]
    raise StreamlineError(f"zarr.codec: unknown codec '{codec}' (allowed: none, zstd, blosc)")


def to_storage(t: torch.Tensor) -> np.ndarray:
    """A tensor as the numpy array that stores it bit-exactly."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.uint16).numpy()
    return t.numpy()


def from_storage(a: np.ndarray, logical_dtype: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.view(torch.bfloat16) if logical_dtype == "bfloat16" else t


def settle() -> None:
    """After a zarr read failed, let the reads still in flight on zarr's event loop finish and collect their
    errors: a read of many chunks runs them concurrently, and one chunk that does not decode ends the call while
    the others go on. Left pending, they print "Task was destroyed but it is pending!" and their own tracebacks
    to stderr as the process exits on its one-line error."""
    import asyncio

    from zarr.core.sync import _get_loop

    async def the_others() -> None:
        me = asyncio.current_task()
        await asyncio.gather(*(t for t in asyncio.all_tasks() if t is not me), return_exceptions=True)

    try:
        asyncio.run_coroutine_threadsafe(the_others(), _get_loop()).result(timeout=60)
    except Exception:  # settling is a courtesy: never hide the error being reported
        pass


def crc(a: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B"))


class HiddenStore:
    """A group with `hidden` [K, N, T, H], `attention_mask` [N, T] and `checksum` [N, K+1] (-1: not done)."""

    def __init__(self, path: str | Path, mode: str = "r"):
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise StreamlineError(f"{self.path}: no hidden-state store here (run the extraction that writes it)")
        try:  # a torn or deleted zarr.json, or arrays whose metadata was edited, are a damaged store
            self.group = zarr.open_group(str(self.path), mode=mode)
            self.attrs = dict(self.group.attrs)
            if self.attrs.get("format") != FORMAT:
                raise StreamlineError(
                    f"{self.path}: a store of an older format; run the extraction again to rebuild it"
                )
            self.hidden = self.group["hidden"]
            self.mask = self.group["attention_mask"]
            self.checksum = self.group["checksum"]
            self.dtype = self.attrs["dtype"]
        except StreamlineError:
            raise
        except Exception as e:
            raise StreamlineError(
                f"{self.path}: the store's metadata cannot be read ({type(e).__name__}); run the "
                f"extraction again to rebuild it"
            ) from None
        self._check_shapes()
        self._sums: np.ndarray | None = None  # the checksum table, read once by readers
        self._pending: dict[tuple[int, int], int] = {}  # writers: (k, n) -> crc of chunks written, not yet recorded
        self._lock = threading.Lock()

    @classmethod
    def create_or_resume(
        cls, path: str | Path, *, shape: tuple[int, int, int, int], dtype: str, codec: str, level: int, attrs: dict
    ) -> "HiddenStore":
        """Open a store written with the same `attrs`, or start a fresh one if anything differs."""
        path = Path(path)
        require_owned(path, "hidden-state store")  # a user's directory is refused, never emptied
        if (path / "zarr.json").is_file():
            try:
                saved = json.loads((path / "zarr.json").read_text())["attributes"]
                same = saved.get("fingerprint") == attrs["fingerprint"] and saved.get("format") == FORMAT
            except (OSError, KeyError, ValueError):
                same = False
            if same:
                removed = sum(1 for p in path.rglob("*.partial") if p.unlink() is None)
                if removed:
                    log.info("removed %d partial chunk(s) left by an interrupted run", removed)
                try:
                    store = cls(path, mode="r+")
                    store.check_shape(shape, "this extraction")
                    store.read_table()  # the table that says what is done must itself be readable
                    return store
                except Exception as e:
                    log.warning(
                        "%s is damaged (%s); starting it afresh",
                        path,
                        str(e).split(": ", 1)[-1] if isinstance(e, StreamlineError) else type(e).__name__,
                    )
            else:
                log.info("%s was written with other inputs; starting it afresh", path)
        clear(path, "hidden-state store")
        k, n, t, h = shape
        real = target(path)  # through a symlink (a store moved to another disk): written where it points
        real.mkdir(parents=True, exist_ok=True)
        mark(real, "hidden-state store")  # first: from here on the directory is streamline's to restart
        group = zarr.open_group(str(real), mode="a")
        common = {"compressors": compressors(codec, level), "config": {"write_empty_chunks": True}}
        group.create_array(
            "hidden", shape=shape, chunks=(1, 1, t, h), dtype=STORAGE_DTYPES[dtype], fill_value=0, **common
        )
        group.create_array("attention_mask", shape=(n, t), chunks=(1, t), dtype="uint8", fill_value=0, **common)
        group.create_array(
            "checksum",
            shape=(n, k + 1),
            chunks=(1, k + 1),
            dtype="int64",
            fill_value=-1,
            config={"write_empty_chunks": True},
        )
        group.attrs.update({**attrs, "dtype": dtype, "codec": codec, "format": FORMAT, "shape": list(shape)})
        return cls(path, mode="r+")

    def _check_shapes(self) -> None:
        """The arrays must agree with each other and with the shape recorded at creation: an edited zarr.json
        (fewer samples, another width) would otherwise be read as a smaller, valid store."""
        k, n, t, h = self.hidden.shape
        recorded = self.attrs.get("shape")
        problems = []
        if recorded is not None and list(recorded) != [k, n, t, h]:
            problems.append(f"hidden is {[k, n, t, h]}, created as {recorded}")
        if tuple(self.mask.shape) != (n, t):
            problems.append(f"attention_mask is {list(self.mask.shape)}, not {[n, t]}")
        if tuple(self.checksum.shape) != (n, k + 1):
            problems.append(f"checksum is {list(self.checksum.shape)}, not {[n, k + 1]}")
        if isinstance(self.attrs.get("layers"), list) and len(self.attrs["layers"]) != k:
            problems.append(f"hidden holds {k} states, the attributes name {len(self.attrs['layers'])}")
        if self.attrs.get("dtype") not in STORAGE_DTYPES or self.hidden.dtype != np.dtype(STORAGE_DTYPES[self.dtype]):
            problems.append(f"hidden is {self.hidden.dtype}, the attributes say {self.attrs.get('dtype')}")
        if problems:
            raise StreamlineError(
                f"{self.path}: the store's shape was changed ({problems[0]}); run the extraction again to rebuild it"
            )

    def check_shape(self, shape: list[int] | tuple[int, ...], where: str | Path) -> "HiddenStore":
        """The store's [K, N, T, H] must be what `where` (its manifest) says it wrote."""
        if list(self.hidden.shape) != list(shape):
            raise StreamlineError(
                f"{self.path}: holds {list(self.hidden.shape)} but {where} records {list(shape)}; "
                f"run the extraction again"
            )
        return self

    @property
    def num_samples(self) -> int:
        return self.hidden.shape[1]

    @property
    def num_states(self) -> int:
        return self.hidden.shape[0]

    # --- writing ------------------------------------------------------------------------------------
    def write_range(self, k: int, first: int, values: np.ndarray) -> None:
        """Hidden state k of samples first..first+len(values)-1, one chunk each (thread-safe)."""
        self.hidden[k, first : first + len(values)] = values
        with self._lock:
            for j in range(len(values)):
                self._pending[k, first + j] = crc(values[j])

    def finish_sample(self, n: int, mask: np.ndarray) -> None:
        """Write the mask, then the checksum row that marks sample n done. Call after its K chunks are written."""
        self.mask[n] = mask
        with self._lock:
            sums = [self._pending.pop((k, n)) for k in range(self.num_states)]
        self.checksum[n] = np.array(sums + [crc(mask)], dtype=np.int64)

    # --- which samples are done -------------------------------------------------------------------------
    def _sample_ok(self, n: int, sums: np.ndarray) -> bool:
        if sums[-1] < 0:
            return False
        try:
            if crc(self.mask[n]) != sums[-1]:
                return False
            return all(crc(self.hidden[k, n]) == sums[k] for k in range(self.num_states))
        except Exception:  # an unreadable chunk (truncated, garbage that does not decode)
            settle()
            return False

    def missing_samples(self, verify: bool = True, threads: int = 4) -> list[int]:
        """Samples to (re)compute: not done, or (verify) done but failing their checksums."""
        sums = self.read_table()
        if not verify:
            return [n for n in range(self.num_samples) if sums[n, -1] < 0]
        with ThreadPoolExecutor(max_workers=threads) as pool:
            ok = list(pool.map(lambda n: self._sample_ok(n, sums[n]), range(self.num_samples)))
        bad = [n for n in range(self.num_samples) if sums[n, -1] >= 0 and not ok[n]]
        if bad:
            log.warning(
                "%s: %d done sample(s) fail their checksums (e.g. sample %d); recomputing them",
                self.path,
                len(bad),
                bad[0],
            )
        return [n for n in range(self.num_samples) if not ok[n]]

    # --- reading (verified) -----------------------------------------------------------------------------
    def require_complete(self) -> "HiddenStore":
        missing = int((self._table()[:, -1] < 0).sum())
        if missing:
            raise StreamlineError(
                f"{self.path}: incomplete store ({missing} of {self.num_samples} samples missing); "
                f"run the extraction again to finish it"
            )
        return self

    def _table(self) -> np.ndarray:
        if self._sums is None:
            self._sums = self.read_table()
        return self._sums

    def read_table(self) -> np.ndarray:
        try:
            return self.checksum[:]
        except Exception as e:  # garbage in the table's chunks: nothing says which samples are done
            settle()
            raise StreamlineError(
                f"{self.path}: the checksum table cannot be read ({type(e).__name__}); run "
                f"the extraction again to repair the store"
            ) from None

    def _damaged(self, n: int, k: int, what: str) -> StreamlineError:
        part = "mask" if k == self.num_states else f"hidden state {k}"
        return StreamlineError(f"{self.path}: sample {n}, {part} {what}; run the extraction again to repair the store")

    def _read(self, array, index: tuple, n: int, k: int) -> np.ndarray:
        try:
            return array[index]
        except Exception as e:  # a truncated or garbage chunk that does not decode
            settle()
            raise self._damaged(n, k, f"cannot be read ({type(e).__name__})") from None

    def _verified(self, a: np.ndarray, n: int, k: int) -> np.ndarray:
        expected = self._table()[n, k]
        if expected < 0:
            raise self._damaged(n, k, "was never written")
        if crc(a) != expected:
            raise self._damaged(n, k, "does not match its checksum")
        return a

    def read(self, k: int, n: int) -> torch.Tensor:
        return from_storage(self._verified(self._read(self.hidden, (k, n), n, k), n, k), self.dtype)

    def read_sample(self, n: int) -> torch.Tensor:
        """All K hidden states of one sample, [K, T, H], in the logical dtype."""
        try:
            a = self.hidden[:, n]  # one call: zarr reads the K chunks concurrently
        except Exception:  # find the chunk that does not decode, and name it
            settle()
            a = np.stack([self._read(self.hidden, (k, n), n, k) for k in range(self.num_states)])
        for k in range(self.num_states):
            self._verified(a[k], n, k)
        return from_storage(a, self.dtype)

    def read_mask(self, n: int) -> torch.Tensor:
        k = self.num_states
        return torch.from_numpy(self._verified(self._read(self.mask, (n,), n, k), n, k)).bool()
