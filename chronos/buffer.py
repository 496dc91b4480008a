"""The buffer: owns ACCEPTED -> BUFFERED, which makes accepted events claimable."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chronos.db import transition
from chronos.schema import events
from chronos.states import BUFFER, State

ACTOR = "buffer"


def buffer_events(conn: Connection, ids: Sequence[int], *, now: float) -> None:
    """Make freshly accepted events claimable, FIFO by id, from `now` on."""
    transition(
        conn,
        ids,
        State.ACCEPTED,
        State.BUFFERED,
        owner=BUFFER,
        actor=ACTOR,
        now=now,
        values={"available_at": now},
    )


def sweep(conn: Connection, *, now: float) -> int:
    """Buffer any event left ACCEPTED; return how many.

    Ingestion buffers in the same transaction as it accepts, so this finds nothing
    unless a row was accepted by other means; it keeps "no event stays ACCEPTED" true.
    """
    ids = list(
        conn.execute(sa.select(events.c.id).where(events.c.state == State.ACCEPTED.value))
        .scalars()
        .all()
    )
    buffer_events(conn, ids, now=now)
    return len(ids)
