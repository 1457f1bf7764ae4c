"""Typed records of the JSON files stages write: `to_json`, and `from_json`/`load` with every field checked.

The records themselves are dataclasses (artifacts.py, model_info.py) that subclass Record. Reading checks each
field's type with pydantic in strict JSON mode (no "1" for 1, no 1 for True, no NaN) and runs the record's
own `__post_init__` checks; a problem is one line naming the field by its path in the file.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from .atomic import read_artifact
from .errors import StreamlineError

T = TypeVar("T")


@cache
def _adapter(cls: type):
    from pydantic import TypeAdapter
    return TypeAdapter(cls)


def _problem(error) -> str:
    """A pydantic ValidationError in words: the first bad field, by its path in the file."""
    first = error.errors()[0]
    if first["type"] == "value_error":  # a record's own consistency check (__post_init__)
        return f"incomplete ({first['ctx']['error']})"
    where = ".".join(str(p) for p in first["loc"])
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
    """to_json, from_json and load for the dataclasses that subclass it."""
    __pydantic_config__ = {"allow_inf_nan": False}  # no stage writes NaN (atomic_write_json refuses it)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls: type[T], obj: Any, where: str | Path = "artifact") -> T:
        parsed = _parse(cls, obj)
        if isinstance(parsed, str):
            raise StreamlineError(f"{where}: {parsed}; run the stage that writes it again")
        return parsed

    @classmethod
    def load(cls: type[T], path: str | Path, what: str, aside: str | Path | None = None) -> T:
        """The artifact at `path`, checked; a torn or invalid one is moved aside (`aside`: the file, or the dir
        it belongs to) with one line naming the bad field."""
        parsed: list = []

        def check(obj: dict) -> str | None:
            parsed.append(_parse(cls, obj))
            return parsed[-1] if isinstance(parsed[-1], str) else None

        read_artifact(path, what, aside=aside, check=check)
        return parsed[-1]
