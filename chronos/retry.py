"""The retry policy: (attempts, error, now) -> when to try again, or give up. No I/O."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from chronos.states import State

DEFAULT_MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class Decision:
    """Where a failed attempt goes next."""

    state: State
    available_at: float
    reason: str


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, capped, over at most `max_attempts` attempts.

    The n-th retry waits between half and all of `base * 2**(n-1)` seconds (at most
    `cap`), so workers that failed together do not retry together.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    base: float = 1.0
    cap: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not (math.isfinite(self.base) and math.isfinite(self.cap)):
            raise ValueError("backoff must be a finite number of seconds")
        if self.base < 0 or self.cap < self.base:
            raise ValueError("backoff needs 0 <= base <= cap")

    def delay(self, attempts: int, rng: random.Random) -> float:
        """Seconds to wait after the `attempts`-th failed attempt."""
        # The exponent is bounded: 2.0**1024 overflows, and 2**64 is past any cap.
        full = min(self.cap, self.base * 2.0 ** min(64, max(0, attempts - 1)))
        return full * (0.5 + 0.5 * rng.random())

    def after_failure(
        self, attempts: int, *, terminal: bool, error: str, now: float, rng: random.Random
    ) -> Decision:
        """Decide what follows a failed attempt (`attempts` counts this one)."""
        if terminal:
            return Decision(State.FAILED_TERMINAL, now, error)
        if attempts >= self.max_attempts:
            return Decision(State.FAILED_TERMINAL, now, f"attempts exhausted ({attempts}): {error}")
        return Decision(State.FAILED_RETRYABLE, now + self.delay(attempts, rng), error)
