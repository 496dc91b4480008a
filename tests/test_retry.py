"""The retry policy: exponential backoff with jitter, capped, and when to give up.

`RetryPolicy` is pure (no I/O, the random source is passed in), so these tests call
it directly: the bounds of each delay, the cap, exhaustion at `max_attempts`, the
terminal flag, and the arguments it refuses.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chronos.retry import DEFAULT_MAX_ATTEMPTS, Decision, RetryPolicy
from chronos.states import State

NOW = 1_000.0


class _Fixed(random.Random):
    """A random source that always draws the same value, to pin the jitter."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_defaults_allow_five_attempts_starting_at_one_second() -> None:
    policy = RetryPolicy()
    assert policy.max_attempts == DEFAULT_MAX_ATTEMPTS == 5
    assert policy.base == 1.0
    assert policy.cap >= policy.base


def test_delay_doubles_with_each_attempt_at_the_extremes_of_the_jitter() -> None:
    policy = RetryPolicy(base=2.0, cap=1_000.0)
    least = [policy.delay(n, _Fixed(0.0)) for n in range(1, 6)]
    most = [policy.delay(n, _Fixed(0.999999)) for n in range(1, 6)]
    assert least == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert most == pytest.approx([2.0, 4.0, 8.0, 16.0, 32.0], rel=1e-5)


def test_delay_stops_growing_at_the_cap() -> None:
    policy = RetryPolicy(base=1.0, cap=10.0)
    assert policy.delay(4, _Fixed(0.0)) == 4.0  # 8 s full, below the cap
    assert policy.delay(5, _Fixed(0.0)) == 5.0  # 16 s full, capped to 10 s
    assert policy.delay(60, _Fixed(0.0)) == 5.0


def test_jitter_spreads_workers_that_failed_together() -> None:
    policy = RetryPolicy(base=10.0)
    rng = random.Random(7)
    delays = {policy.delay(1, rng) for _ in range(50)}
    assert len(delays) > 40
    assert all(5.0 <= d <= 10.0 for d in delays)


def test_zero_base_retries_at_once() -> None:
    policy = RetryPolicy(base=0.0, cap=0.0)
    decision = policy.after_failure(1, terminal=False, error="boom", now=NOW, rng=random.Random(1))
    assert decision == Decision(State.FAILED_RETRYABLE, NOW, "boom")


def test_failure_before_the_last_attempt_is_retryable_after_the_backoff() -> None:
    policy = RetryPolicy(max_attempts=3, base=4.0, cap=100.0)
    decision = policy.after_failure(
        2, terminal=False, error="ValueError: bad", now=NOW, rng=_Fixed(0.5)
    )
    assert decision.state is State.FAILED_RETRYABLE
    assert decision.available_at == NOW + 8.0 * 0.75
    assert decision.reason == "ValueError: bad"


def test_failure_of_the_last_attempt_is_terminal_with_attempts_exhausted() -> None:
    policy = RetryPolicy(max_attempts=3)
    decision = policy.after_failure(
        3, terminal=False, error="RetryableError: offline", now=NOW, rng=random.Random(1)
    )
    assert decision.state is State.FAILED_TERMINAL
    assert decision.available_at == NOW
    assert "attempts exhausted" in decision.reason
    assert "(3)" in decision.reason
    assert decision.reason.endswith("RetryableError: offline")


def test_attempts_beyond_the_maximum_are_still_terminal() -> None:
    policy = RetryPolicy(max_attempts=2)
    decision = policy.after_failure(7, terminal=False, error="x", now=NOW, rng=random.Random())
    assert decision.state is State.FAILED_TERMINAL


def test_terminal_flag_fails_for_good_on_the_first_attempt() -> None:
    policy = RetryPolicy(max_attempts=5)
    decision = policy.after_failure(
        1, terminal=True, error="TerminalError: corrupt", now=NOW, rng=random.Random(1)
    )
    assert decision == Decision(State.FAILED_TERMINAL, NOW, "TerminalError: corrupt")


def test_single_attempt_policy_never_retries() -> None:
    policy = RetryPolicy(max_attempts=1)
    decision = policy.after_failure(1, terminal=False, error="x", now=NOW, rng=random.Random())
    assert decision.state is State.FAILED_TERMINAL


def test_policy_is_pure_given_the_same_random_source() -> None:
    policy = RetryPolicy(max_attempts=10, base=0.5, cap=60.0)
    first = [
        policy.after_failure(n, terminal=False, error="e", now=NOW, rng=random.Random(42))
        for n in range(1, 11)
    ]
    second = [
        policy.after_failure(n, terminal=False, error="e", now=NOW, rng=random.Random(42))
        for n in range(1, 11)
    ]
    assert first == second


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -3}, "max_attempts"),
        ({"base": -1.0}, "base"),
        ({"base": 10.0, "cap": 5.0}, "cap"),
        ({"base": 1.0, "cap": -1.0}, "cap"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": math.nan},
        {"base": 1.0, "cap": math.nan},
        {"base": math.inf, "cap": math.inf},
    ],
)
def test_non_finite_backoff_raises_value_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_delay_stays_capped_for_very_many_attempts() -> None:
    policy = RetryPolicy(max_attempts=5_000, base=1.0, cap=300.0)
    assert policy.delay(1_025, _Fixed(0.0)) == 150.0
    decision = policy.after_failure(4_999, terminal=False, error="e", now=NOW, rng=_Fixed(0.0))
    assert (decision.state, decision.available_at) == (State.FAILED_RETRYABLE, NOW + 150.0)


@settings(max_examples=300, deadline=None)
@given(
    attempts=st.integers(min_value=1, max_value=5_000),
    max_attempts=st.integers(min_value=1, max_value=5_000),
    base=st.just(0.0) | st.floats(min_value=1e-6, max_value=1e4),
    extra=st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
    seed=st.integers(min_value=0, max_value=2**32),
    now=st.floats(min_value=0.0, max_value=4e9, allow_nan=False),
)
def test_every_decision_follows_the_policy(
    attempts: int,
    max_attempts: int,
    base: float,
    extra: float,
    seed: int,
    now: float,
) -> None:
    cap = base + extra
    policy = RetryPolicy(max_attempts=max_attempts, base=base, cap=cap)
    full = min(cap, base * 2.0 ** min(attempts - 1, 1_000))  # past that, capped anyway

    delay = policy.delay(attempts, random.Random(seed))
    assert full / 2 <= delay <= full
    assert delay <= cap

    decision = policy.after_failure(
        attempts, terminal=False, error="E: x", now=now, rng=random.Random(seed)
    )
    if attempts >= max_attempts:
        assert decision.state is State.FAILED_TERMINAL
        assert decision.available_at == now
        assert decision.reason.startswith("attempts exhausted")
    else:
        assert decision.state is State.FAILED_RETRYABLE
        assert decision.available_at == now + delay
        assert decision.reason == "E: x"

    terminal = policy.after_failure(
        attempts, terminal=True, error="E: x", now=now, rng=random.Random(seed)
    )
    assert terminal == Decision(State.FAILED_TERMINAL, now, "E: x")


@settings(max_examples=100, deadline=None)
@given(
    base=st.floats(min_value=1e-3, max_value=10.0, allow_nan=False),
    attempts=st.integers(min_value=1, max_value=30),
)
def test_full_backoff_never_shrinks_as_attempts_grow(base: float, attempts: int) -> None:
    policy = RetryPolicy(max_attempts=100, base=base, cap=300.0)
    top = _Fixed(0.999999)
    assert policy.delay(attempts + 1, top) >= policy.delay(attempts, top)
