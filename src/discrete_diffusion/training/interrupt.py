"""Deferred SIGINT / SIGTERM: the handlers only note the signal, and the trainer stops at the
next step boundary (after a complete update and its periodic evaluation, samples and
checkpoint), so the checkpoint it writes there is a consistent (step, weights, optimizer, EMA,
data position, RNG states) tuple whatever moment the signal arrived. A second Ctrl-C aborts at
once, without a checkpoint."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving the checkpoint of `step`."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"interrupted: checkpoint saved at step {step}")
        self.signum, self.step = signum, step

    @property
    def exit_code(self) -> int:
        """The shell's code of a death by this signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


class StopRequest:
    """A context manager that installs the deferring handlers (main thread only; elsewhere
    signals keep their handlers) and restores the previous ones on exit.

    `signum` is the first signal received (0 while none)."""

    def __init__(self, announce: bool = True) -> None:
        self.signum = 0
        self.announce = announce
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: abort now, no checkpoint
        if not self.signum:
            self.signum = signum
            if self.announce:  # os.write: print could re-enter a stream the loop is writing
                name = signal.Signals(signum).name
                os.write(2, f"\n{name}: stopping after this step to save a checkpoint "
                            f"(Ctrl-C again aborts without saving)\n".encode())
