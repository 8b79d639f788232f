"""Progress of a long step (a table build fetching runs, a replay draining the store).

On a terminal, a tqdm bar on stderr. Elsewhere (a Databricks job's log, a spark-submit
driver log) a line on the ``mlflow_spark_tools.progress`` logger at INFO every ``every``
seconds and one at the end of a step that logged any, so that a job's log shows it is alive
without a line per item.
The command line shows that logger by default; a program that uses the package as a library
sees the lines only when it configures logging for them.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

PROGRESS_LOGGER = "mlflow_spark_tools.progress"
log = logging.getLogger(PROGRESS_LOGGER)


class Progress:
    """Counts items of one step and shows them; thread-safe.

    Args:
        description: what is counted, e.g. ``"Experiment 1/3 (id 42): runs fetched"``.
        unit: the items' name (``runs``, ``payloads``).
        total: how many are expected, when known.
        bar: a bar instead of log lines; default: when stderr is a terminal.
        every: seconds between log lines.
        clock: monotonic clock (injectable for tests).
    """

    def __init__(self, description: str, unit: str, total: int | None = None, *, bar: bool | None = None,
                 every: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.description = description
        self.unit = unit
        self.total = total
        self.count = 0
        self.every = every
        self._clock = clock
        self._started = self._last = clock()
        self._lock = threading.Lock()
        self._bar: Any = None
        if bar if bar is not None else _stderr_is_terminal():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=description, unit=f" {unit}", file=sys.stderr,
                             leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        """``n`` more items done (more than the total expected raise the total: items that came
        while the step ran)."""
        with self._lock:
            self.count += n
            if self.total is not None and self.count > self.total:
                self.total = self.count
                if self._bar is not None:
                    self._bar.total = self.count
            if self._bar is not None:
                self._bar.update(n)
                return
            now = self._clock()
            if now - self._last < self.every:
                return
            self._last = now
            line = self._line(now)
        log.info("%s", line)

    def close(self) -> None:
        """The step ended: remove the bar, or log the final count (only after a step long enough
        to have logged a line: a short one stays quiet)."""
        with self._lock:
            bar, self._bar = self._bar, None
            line = self._line(self._clock())
            logged = self._last > self._started
        if bar is not None:
            bar.close()
        elif logged:
            log.info("%s (done)", line)

    def _line(self, now: float) -> str:
        seconds = max(now - self._started, 1e-9)
        of = f"/{self.total:,}" if self.total is not None else ""
        return (f"{self.description}: {self.count:,}{of} {self.unit} in {seconds:.0f} s "
                f"({self.count / seconds:,.1f} {self.unit}/s)")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False
