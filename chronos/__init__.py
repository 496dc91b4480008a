"""Chronos: a durable queue for time-ordered telemetry.

Once an event is accepted, its fate is never silent: it ends PROCESSED or
FAILED_TERMINAL, and every step on the way is a recorded state transition.
"""

from __future__ import annotations

from chronos.app import Chronos
from chronos.errors import ChronosError, RetryableError, TerminalError
from chronos.handlers import Event
from chronos.states import State

__all__ = ["Chronos", "ChronosError", "Event", "RetryableError", "State", "TerminalError"]
