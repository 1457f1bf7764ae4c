"""Typed records of the JSON files stages write: `write` signs them, `load` checks them, field by field.

The records themselves are dataclasses (artifacts.py, model_info.py, manifests.py) that subclass Record.

Writing (`write`) embeds a `digest` of the record's content: the SHA-256 of its canonical JSON (sorted keys,
no spaces). Reading (`load`) first checks that digest, so a file changed after its stage wrote it (a hand
edit, a file copied from another run, a record of an older release without a digest) is treated as a torn
one: one line naming it, the file (or the dir it belongs to) moved aside, so that its stage reruns. The
digest sits beside the content, not apart from it: it catches any edit that leaves it alone, not an edit
that also rewrites it (for those, the records check their own values, and the report cross-checks them).

Then each field's type is checked with pydantic in strict JSON mode (no "1" for 1, no 1 for True, no NaN),
counts are >= 0 and fractions in [0, 1] (`Count`, `Fraction`), and the record's own `__post_init__` checks
its values against each other; a problem is one line naming the field by its path in the file.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, TypeVar

from annotated_types import Ge, Interval

from .atomic import atomic_write_bytes, read_artifact
from .errors import StreamlineError

T = TypeVar("T")

Count = Annotated[int, Ge(0)]  # a number of things: params, layers, tokens, blocks, steps
Fraction = Annotated[float, Interval(ge=0, le=1)]  # an accuracy, a stability, an agreement

DIGEST = "digest"
UNSIGNED = "not what its stage wrote (it carries no digest: written by hand, or by a release before digests)"
CHANGED = "not what its stage wrote (its content does not match its digest)"


def digest(obj: dict) -> str:
    """The digest of a record's content (`obj` without its own digest), as `write` embeds it."""
    content = {k: v for k, v in obj.items() if k != DIGEST}  # (a NaN read back is digested, then refused)
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def write_record(path: str | Path, obj: dict, signed: bool = True) -> None:
    """`obj` as a JSON file signed with its digest (gzipped if the name ends in .gz), atomically. Strict JSON: a
    NaN or Inf is refused (one line naming the file), never written."""
    try:
        obj = json.loads(json.dumps(obj, allow_nan=False))  # as a reader will see it (str keys, lists)
    except ValueError:
        raise StreamlineError(f"{path}: the stage computed a NaN or Inf; refusing to write it") from None
    obj = {**obj, DIGEST: digest(obj)} if signed else obj
    data = (json.dumps(obj, indent=None if str(path).endswith(".gz") else 2) + "\n").encode()
    atomic_write_bytes(path, gzip.compress(data, mtime=0) if str(path).endswith(".gz") else data)


def unsigned_problem(obj: dict) -> str | None:
    """Why `obj` (a record read back) is not what its stage wrote, or None."""
    if not isinstance(obj.get(DIGEST), str):
        return UNSIGNED
    return CHANGED if obj[DIGEST] != digest(obj) else None


@cache
def _adapter(cls: type):
    from pydantic import TypeAdapter

    return TypeAdapter(cls)


def _problem(error) -> str:
    """A pydantic ValidationError in words: the first bad field, by its path in the file."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    if first["type"] == "value_error":  # a record's own consistency check (__post_init__), where it failed
        return f"incomplete ({f'at {where!r}: ' if where else ''}{first['ctx']['error']})"
    if first["type"] in ("greater_than_equal", "less_than_equal"):  # Count, Fraction
        return f"out of range ('{where}' is {first['input']!r}: {first['msg'].lower()})"
    return f"incomplete (no valid '{where}')" if where else f"not a record of this kind ({first['msg']})"


def _parse(cls: type[T], obj: Any) -> T | str:
    """`obj` (parsed JSON) as `cls`, or the problem in words. Strict JSON mode: no "1" for 1, no 1 for True."""
    from pydantic import ValidationError

    try:
        return _adapter(cls).validate_json(json.dumps(obj, allow_nan=True), strict=True)
    except ValidationError as e:
        return _problem(e)
    except RecursionError:
        return "not a record of this kind (nested too deep)"


class Record:
    """to_json, write, from_json, checked and load for the dataclasses that subclass it."""

    __pydantic_config__ = {"allow_inf_nan": False}  # no stage writes NaN (the writers refuse it)
    signed: ClassVar[bool] = True  # False for a file no stage reads (summary.json): written as it is

    def to_json(self) -> dict:
        return asdict(self)

    def write(self, path: str | Path) -> None:
        """The record as its file, signed with its digest (gzipped if the name ends in .gz), atomically."""
        write_record(path, self.to_json(), self.signed)

    @classmethod
    def from_json(
        cls: type[T], obj: Any, where: str | Path = "artifact", then: str = "run the stage that writes it again"
    ) -> T:
        """A record passed in memory (no digest to check)."""
        parsed = _parse(cls, obj)
        if isinstance(parsed, str):
            raise StreamlineError(f"{where}: {parsed}; {then}")
        return parsed

    @classmethod
    def checked(cls: type[T], obj: Any) -> T | str:
        """A record read from its file: its digest, then its fields; the record, or the problem in words."""
        if not isinstance(obj, dict):
            return "not a JSON object"
        return (cls.signed and unsigned_problem(obj)) or _parse(cls, {k: v for k, v in obj.items() if k != DIGEST})

    @classmethod
    def load(
        cls: type[T],
        path: str | Path,
        what: str,
        aside: str | Path | None = None,
        check: Callable[[T], str | None] | None = None,
    ) -> T:
        """The artifact at `path`, checked (its digest, its fields, and `check(record)`: a problem against
        other files, in words, or None); a torn, changed or invalid one is moved aside (`aside`: the file, or
        the dir it belongs to) with one line naming the problem."""
        parsed: list = []

        def problem(obj: dict) -> str | None:
            parsed.append(cls.checked(obj))
            if isinstance(parsed[-1], str):
                return parsed[-1]
            return check(parsed[-1]) if check else None

        read_artifact(path, what, aside=aside, check=problem)
        return parsed[-1]
