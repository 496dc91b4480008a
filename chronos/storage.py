"""Storage: writes `processed_events`, one row per PROCESSED event, never an event's state.

The caller runs `store` in the same transaction as the PROCESSING -> PROCESSED
transition; the database refuses a row for an event in any other state.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chronos.schema import processed_events


def store(
    conn: Connection, results: Sequence[tuple[int, str | None]], *, worker: str, now: float
) -> None:
    """Append the results of events just made PROCESSED, one row each."""
    if not results:
        return
    conn.execute(
        sa.insert(processed_events),
        [
            {"event_id": event_id, "result": result, "processed_at": now, "worker": worker}
            for event_id, result in results
        ],
    )
