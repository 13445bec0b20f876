"""Time spent listening: a monotonic clock that leaves out the stretches this process was deaf.

A process judges another by its silence: no status for ``timeout`` seconds means it is gone. But
if *this* process was stopped (SIGSTOP, a VM pause, a starved CPU), the other's messages wait
unread in its socket, and the first check after waking would find everyone silent. The check
runs before the queued messages are read: asyncio runs the timer that wakes the checker and the
task that parses the socket in the same turn of the loop, checker first.

``ListeningClock`` measures silence only over time the loop was running: every caller that proves
the loop alive (a periodic checker, a message callback) calls ``tick``; a gap between ticks longer
than ``expected_gap_s`` counts, beyond that allowance, as deaf time and is left out of ``now``.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class ListeningClock:
    def __init__(self, *, expected_gap_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._expected_gap_s = expected_gap_s
        self._clock = clock
        self._last = clock()
        self.deaf_s = 0.0
        """Total time left out so far."""

    def tick(self) -> float:
        """The loop is running now; returns ``now()``. Call it at least every ``expected_gap_s``."""
        real = self._clock()
        gap = real - self._last
        if gap > self._expected_gap_s:
            self.deaf_s += gap - self._expected_gap_s
        self._last = real
        return real - self.deaf_s

    def now(self) -> float:
        """Monotonic seconds, without the deaf stretches recorded so far."""
        return self._clock() - self.deaf_s
