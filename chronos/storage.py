"""Storage: writes `processed_events`, one row per PROCESSED event, never an event's state.

The caller runs `store` in the same transaction as the PROCESSING -> PROCESSED
transition; the database refuses a row for an event in any other state.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chronos.schema import processed_events


def store(conn: Connection, event_id: int, result: str | None, *, worker: str, now: float) -> None:
    """Append the result of a PROCESSED event."""
    conn.execute(
        sa.insert(processed_events).values(
            event_id=event_id, result=result, processed_at=now, worker=worker
        )
    )
