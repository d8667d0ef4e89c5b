"""Progress display shared by training, evaluation, sampling, the demo and data preparation.

On a terminal (stderr is a TTY) a progress bar is a tqdm bar, redrawn in place. Anywhere else
(a log file, a pipe, a batch job) redrawing would write one `\\r` update per refresh into the
log, so a plain line is printed instead, at a low rate: when at least `interval` seconds
(30, or $TQDM_MININTERVAL when set) AND at least a tenth of the total have passed since the
last line, and once at the end of a job that printed a line or lasted `interval`.
`configure(enabled=False)` (the CLI's `--no-progress`) turns both off.

Like `files.py`, this module holds no mathematics and imports nothing of the package.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

PLAIN_INTERVAL_S = 30.0  # seconds between two plain progress lines at least
PLAIN_FRACTION = 0.1  # share of the total between two plain progress lines at least
INTERVAL_ENV = "TQDM_MININTERVAL"

_enabled = True


def configure(enabled: bool) -> None:
    """Turn every progress display of this process on or off."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    """Whether progress is shown (see `configure`)."""
    return _enabled


def plain_interval() -> float:
    """Seconds between plain progress lines: $TQDM_MININTERVAL when set, else 30."""
    value = os.environ.get(INTERVAL_ENV, "")
    try:
        return max(0.0, float(value)) if value else PLAIN_INTERVAL_S
    except ValueError:
        return PLAIN_INTERVAL_S


def progress_bar(total: int | None = None, *, desc: str = "", unit: str = "it",
                 initial: int = 0, leave: bool = True, disable: bool = False,
                 file: IO[str] | None = None) -> Any:
    """A progress display with tqdm's `update(n)`, `n`, `total`, `set_postfix(**kw)` and
    `close()` (also a context manager): a tqdm bar on a terminal, a `PlainProgress` elsewhere,
    a silent tqdm when disabled here or by `configure`."""
    from tqdm import tqdm

    file = sys.stderr if file is None else file
    off = disable or not _enabled
    if off or _isatty(file):
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave,
                    disable=off, dynamic_ncols=True, file=file)
    return PlainProgress(total, desc=desc, unit=unit, initial=initial, file=file)


def _isatty(file: IO[str]) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream: treat as a log
        return False


class PlainProgress:
    """Progress as whole lines, at most one per `interval` seconds and per tenth of the total
    (see the module docstring), and a last line on `close()` if anything happened since."""

    def __init__(self, total: int | None, *, desc: str = "", unit: str = "it", initial: int = 0,
                 file: IO[str] | None = None, interval: float | None = None) -> None:
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.file = sys.stderr if file is None else file
        self.interval = plain_interval() if interval is None else interval
        self.start = self.last_time = time.monotonic()
        self.last_n = self.initial = initial
        self.postfix = ""
        self.closed = self.printed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        step = PLAIN_FRACTION * self.total if self.total else 0.0
        if now - self.last_time >= self.interval and self.n - self.last_n >= max(step, 1):
            self._print(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        now = time.monotonic()
        lines_due = self.printed or now - self.start >= self.interval  # quick jobs stay silent
        if not self.closed and self.n != self.last_n and lines_due:
            self._print(now)
        self.closed = True

    def _print(self, now: float) -> None:
        elapsed = now - self.start
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            line = f"{head}{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            line = f"{head}{self.n} {self.unit}"
        line += f", {_clock(elapsed)} elapsed"
        done = self.n - self.initial  # a resumed run starts at `initial`: its rate is of this run
        if self.total and done > 0 and self.n < self.total:
            line += f", about {_clock(elapsed * (self.total - self.n) / done)} left"
        if self.postfix:
            line += f", {self.postfix}"
        self.file.write(line + "\n")
        self.file.flush()
        self.last_time, self.last_n, self.printed = now, self.n, True

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _clock(seconds: float) -> str:
    """h:mm:ss, or m:ss under an hour."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"
