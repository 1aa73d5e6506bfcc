"""A progress line on stderr for long writes: count/total, rate and ETA.

On a terminal the line is redrawn in place (\\r) a few times a second; in a log file (a batch job,
`ray job submit`, CI) a full line is printed every ~10 % instead, so logs stay short but still
show the job moving. Other messages go through `note`, which clears the in-place line first so
the two never garble each other. `say` is the one way the jobs print a line of their own (the
driver's or a Ray worker's progress, a warning); `note` prints through it. Not tqdm (installed): in a file it prints either nothing
(disable=None) or \\r-joined redraws on one line; whole lines every 10 % would need a subclass
overriding its internal status_printer, clear and close, more code than this module.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

from data_shards.io import redact


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds) + 0.5)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def say(line: str, stream: TextIO | None = None) -> None:
    """Print one line: URLs in it without their credentials (data and storage URLs may carry them),
    flushed at once so that a job's log shows it as it happens. `stream` is sys.stdout as it is at
    the call (pytest's capture replaces it) unless given."""
    print(redact(line), file=stream if stream is not None else sys.stdout, flush=True)


def tell(line: str) -> None:
    """A driver's line in a job's log, "[comgan] " first: what the pipeline and a sweep say, told
    apart from the workers' "[stage1] ..." lines."""
    say("[comgan] " + line)


class Progress:
    """Counts processed items against an optional total and reports on `stream`."""

    REDRAW_S = 0.2      # terminal: at most five redraws a second
    STEP = 0.10         # log file: a line every 10 % of the total (or every 1000 items without one)

    def __init__(self, total: int | None = None, label: str = "", stream: TextIO | None = None,
                 enabled: bool = True, unit: str = "samples"):
        self.label, self.unit, self.enabled = redact(label), unit, enabled  # labels and notes name URLs
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.count, self.start = 0, time.monotonic()
        self._drawn = False                 # an in-place line is on screen
        self._printed = 0                   # log file: the count of the last line printed
        self._last_draw = 0.0
        self.total = total

    @property
    def total(self) -> int | None:
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        """Settable later: a source's size is often known only after it has been listed."""
        self._total = value
        self._next_mark = self._mark_after(self.count)

    def _mark_after(self, count: int) -> int:
        if not self.total:
            return (count // 1000 + 1) * 1000
        step = max(1, int(self.total * self.STEP))
        return (count // step + 1) * step

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        head = f"{self.label}: " if self.label else ""
        if not self.total:
            return f"{head}{self.count} {self.unit}  {rate:.1f} {self.unit}/s"
        eta = (self.total - self.count) / rate if rate > 0 else float("nan")
        eta_text = format_duration(eta) if eta == eta else "?"
        return (f"{head}{self.count}/{self.total} {self.unit} ({100 * self.count / self.total:.0f}%)  "
                f"{rate:.1f} {self.unit}/s  ETA {eta_text}")

    def advance(self, n: int = 1) -> None:
        self.count += n
        if not self.enabled:
            return
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw >= self.REDRAW_S or self.count == self.total:
                self._draw(now)
        elif self.count >= self._next_mark:
            print(self.line(), file=self.stream, flush=True)
            self._printed, self._next_mark = self.count, self._mark_after(self.count)

    def _draw(self, now: float) -> None:
        self.stream.write("\r" + self.line() + "\033[K")  # \033[K: erase what a longer line left
        self.stream.flush()
        self._drawn, self._last_draw = True, now

    def note(self, message: str) -> None:
        """Print a message on its own line without breaking the progress line."""
        if not self.enabled:
            return
        if self._drawn:
            self.stream.write("\r\033[K")
        say(message, self.stream)
        if self._drawn:
            self._draw(time.monotonic())

    def close(self) -> None:
        """Show the final count: end the in-place line, or print a last line to a log file."""
        if not self.enabled:
            return
        if self._drawn:
            self.stream.write("\r" + self.line() + "\033[K\n")
            self.stream.flush()
            self._drawn = False
        elif not self.tty and self.count != self._printed:
            print(self.line(), file=self.stream, flush=True)
            self._printed = self.count

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start
