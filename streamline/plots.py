"""Matplotlib figures drawn without a display and written atomically."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .atomic import atomic_path


@contextmanager
def figure(path: str | Path, nrows: int = 1, ncols: int = 1, dpi: int = 110, **subplots: Any) -> Iterator[tuple]:
    """`with figure(path, figsize=...) as (fig, ax):` draw; the file appears only if drawing finished."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(nrows, ncols, **subplots)
    try:
        yield fig, axes
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
