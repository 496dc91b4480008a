"""The handler contract: `Event`, loading `module:function`, and the built-in handler."""

from __future__ import annotations

import datetime as dt
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chronos import errors

Handler = Callable[["Event"], Any]

DEFAULT_HANDLER = "chronos.handlers:telemetry"


@dataclass(frozen=True)
class Event:
    """One event as a handler sees it."""

    id: int
    source: str
    key: str | None
    type: str | None
    event_time: dt.datetime  # UTC
    accepted_at: dt.datetime  # UTC
    payload: dict[str, Any]
    attempt: int  # 1 for the first attempt


def load_handler(spec: str) -> Handler:
    """Import `module:function`.

    Raises:
        UsageError: the spec is malformed, the module or function is missing.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise errors.UsageError(f"--handler must look like module:function, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the module's own code may raise anything while importing
        raise errors.UsageError(
            f"cannot import handler module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    handler = getattr(module, attr, None)
    if not callable(handler):
        raise errors.UsageError(f"{module_name!r} has no callable {attr!r}")
    return handler  # type: ignore[no-any-return]


def to_json(result: Any) -> str | None:
    """Serialise a handler's result for storage.

    Raises:
        TerminalError: the result is not JSON-serialisable (no retry can fix that).
    """
    if result is None:
        return None
    try:
        text = json.dumps(result, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")  # a lone surrogate has no UTF-8 form: no column can hold it
        return text
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise errors.TerminalError(f"result is not JSON-serialisable: {exc}") from exc


def telemetry(event: Event) -> dict[str, Any]:
    """The built-in handler: normalise the time to UTC and measure the ingest lag.

    Returns the event time as RFC 3339 UTC, the lag in seconds between the event
    time and its acceptance, and the payload unchanged.
    """
    lag = (event.accepted_at - event.event_time).total_seconds()
    return {
        "event_time_utc": event.event_time.isoformat().replace("+00:00", "Z"),
        "lag_seconds": round(lag, 6),
        "source": event.source,
        "type": event.type,
        "payload": event.payload,
    }
