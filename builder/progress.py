"""Progress on stderr: rich bars on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from rich.progress import TaskID

from modelcar.cliutil import human

__all__ = ["Progress", "human"]


class Progress:
    """Counts bytes for a few named phases; thread-safe; prints to stderr only."""

    def __init__(self, *, quiet: bool = False, stream: TextIO | None = None, interval: float = 5.0):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.interval = interval
        self._lock = threading.Lock()
        self._totals: dict[str, int] = {}
        self._done: dict[str, int] = {}
        self._last = time.monotonic()
        self._rich = None
        self._tasks: dict[str, int] = {}
        if not quiet and self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(
                TextColumn("{task.description:<10}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._rich.start()

    def add_total(self, phase: str, n: int) -> None:
        with self._lock:
            self._totals[phase] = self._totals.get(phase, 0) + n
            self._done.setdefault(phase, 0)
            if self._rich is not None:
                if phase not in self._tasks:
                    self._tasks[phase] = self._rich.add_task(phase, total=0)
                self._rich.update(TaskID(self._tasks[phase]), total=self._totals[phase])

    def advance(self, phase: str, n: int) -> None:
        with self._lock:
            self._done[phase] = self._done.get(phase, 0) + n
            if self._rich is not None:
                if phase in self._tasks:
                    self._rich.advance(TaskID(self._tasks[phase]), n)
                return
            now = time.monotonic()
            if self.quiet or now - self._last < self.interval:
                return
            self._last = now
            parts = [
                f"{p} {human(self._done[p])}/{human(self._totals.get(p, 0))}" for p in self._done
            ]
            print("modelcar: " + ", ".join(parts), file=self.stream, flush=True)

    def log(self, message: str) -> None:
        if self.quiet:
            return
        if self._rich is not None:
            self._rich.console.print(message, markup=False, highlight=False)
        else:
            print(f"modelcar: {message}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
