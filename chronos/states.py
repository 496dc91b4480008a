"""The event state machine: the seven states and the one table of legal transitions.

Everything else derives from `TRANSITIONS`: the owner modules check their updates
against it, the database triggers are generated from it, and the tests enumerate it.
"""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    """Where an event is in its life. PROCESSED and FAILED_TERMINAL are final."""

    RECEIVED = "RECEIVED"  # read from the input, not yet committed
    ACCEPTED = "ACCEPTED"  # validated and durably committed: the acceptance boundary
    BUFFERED = "BUFFERED"  # waiting in the queue, claimable by workers
    PROCESSING = "PROCESSING"  # claimed by one worker under a lease
    PROCESSED = "PROCESSED"  # handler succeeded; exactly one storage row exists
    FAILED_RETRYABLE = "FAILED_RETRYABLE"  # failed; claimable again after available_at
    FAILED_TERMINAL = "FAILED_TERMINAL"  # failed for good; kept for inspection and replay


INGESTION = "ingestion"
BUFFER = "buffer"
WORKER = "worker"

#: (from, to) -> the module that owns the transition. Nothing else is legal.
TRANSITIONS: dict[tuple[State, State], str] = {
    (State.RECEIVED, State.ACCEPTED): INGESTION,
    (State.ACCEPTED, State.BUFFERED): BUFFER,
    (State.BUFFERED, State.PROCESSING): WORKER,
    (State.FAILED_RETRYABLE, State.PROCESSING): WORKER,
    (State.PROCESSING, State.PROCESSED): WORKER,
    (State.PROCESSING, State.FAILED_RETRYABLE): WORKER,
    (State.PROCESSING, State.FAILED_TERMINAL): WORKER,
}

#: The state every event is inserted in.
INITIAL = State.RECEIVED

#: States that are never left.
TERMINAL: frozenset[State] = frozenset({State.PROCESSED, State.FAILED_TERMINAL})

#: States a worker may claim from.
CLAIMABLE: tuple[State, ...] = (State.BUFFERED, State.FAILED_RETRYABLE)


def is_legal(source: State, target: State) -> bool:
    """Tell whether `source -> target` is a legal transition."""
    return (source, target) in TRANSITIONS


def owner_of(source: State, target: State) -> str:
    """Return the owner module of a legal transition.

    Raises:
        ValueError: the transition is not legal.
    """
    try:
        return TRANSITIONS[(source, target)]
    except KeyError:
        raise ValueError(f"illegal transition {source} -> {target}") from None
