"""Progress a user can see in the console and in the stage's log file.

A tqdm bar redraws one console line, which never reaches the `--log` file Snakemake points to; a job of half
an hour left one line there. `bar(...)` is a tqdm bar that also logs a line at least every `LOG_EVERY` seconds
(and when it ends): what is counted, done of total, the rate, the ETA, and the bar's postfix (a loss, MB/s).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Iterable

from tqdm import tqdm

log = logging.getLogger("streamline.progress")

LOG_EVERY = float(os.environ.get("STREAMLINE_PROGRESS_EVERY", "30"))  # seconds between log lines


def duration(seconds: float) -> str:
    """3 s, 4 min 05 s, 2 h 07 min."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def rate(value: float, unit: str) -> str:
    """A rate with the digits it needs: 0.31 MB/s, not 0 MB/s."""
    return f"{value:.3g} {unit}/s" if value < 100 else f"{value:.0f} {unit}/s"


class LoggedBar(tqdm):
    """tqdm, plus a log line every LOG_EVERY seconds and one at the end."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("dynamic_ncols", True)
        super().__init__(*args, **kwargs)
        if self.disable:  # a disabled tqdm keeps none of these, and the log lines need them
            self.desc, self.unit, self.postfix = kwargs.get("desc", ""), kwargs.get("unit", "it"), None
        self._started = time.monotonic()
        self.start_n = self.n  # a resumed run counts its rate from where it resumed (tqdm's `initial` is not set
        # on a disabled bar: TQDM_DISABLE=1)
        self._logged = self._started
        self._logged_n = None

    def update(self, n: float | None = 1) -> bool | None:
        if self.disable:  # no console bar (TQDM_DISABLE=1, a worker that is not the main one): still counted and logged
            self.n += 1 if n is None else n
        shown = super().update(n)
        if time.monotonic() - self._logged >= LOG_EVERY:
            self.log_line()
        return shown

    def log_line(self) -> None:
        now = time.monotonic()
        self._logged, self._logged_n = now, self.n
        elapsed = now - self._started
        done = self.n - self.start_n
        speed = done / elapsed if elapsed > 0 else 0.0
        parts = [
            f"{self.desc or 'progress'}: {self.n:,.0f}"
            + (f"/{self.total:,.0f}" if self.total else "")
            + f" {self.unit}s"
        ]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate(speed, self.unit)}, {duration(elapsed)} elapsed")
        if self.total and speed > 0 and self.n < self.total:
            parts.append(f"ETA {duration((self.total - self.n) / speed)}")
        if self.postfix:
            parts.append(str(self.postfix).lstrip(", "))
        log.info(", ".join(parts))

    def close(self) -> None:
        if getattr(self, "_started", None) is not None and self._logged_n != self.n and self.n > self.start_n:
            self.log_line()  # the last state, once (none for a bar that had nothing to do)
        super().close()


def bar(iterable: Iterable | None = None, **kwargs: Any) -> LoggedBar:
    """A progress bar for a stage: `bar(range(n), desc="score", unit="sample")` or `bar(total=n, ...)`."""
    return LoggedBar(iterable, **kwargs)
