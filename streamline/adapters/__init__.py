"""Adapter registry: every module in this package that defines ADAPTER is a supported family."""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import StreamlineError
from .base import Adapter, StopForward, run_with_capture

_REGISTRY: dict[str, Adapter] = {}
for _info in pkgutil.iter_modules(__path__):
    _adapter = getattr(importlib.import_module(f"{__name__}.{_info.name}"), "ADAPTER", None)
    if _adapter is not None:
        for _t in _adapter.model_types:
            _REGISTRY[_t] = _adapter


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def get_adapter(model_type: str) -> Adapter:
    try:
        return _REGISTRY[model_type]
    except KeyError:
        raise StreamlineError(
            f"model_name: architecture '{model_type}' has no adapter (supported: {', '.join(supported_model_types())})"
        ) from None


__all__ = ["Adapter", "StopForward", "get_adapter", "run_with_capture", "supported_model_types"]
