"""Turn one raw input line into an event to accept, or a reason to reject it. No I/O."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 64
MAX_FIELD_CHARS = 512
_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
_MIN_TS = dt.datetime(1, 1, 2, tzinfo=dt.UTC).timestamp()
_MAX_TS = dt.datetime(9999, 12, 30, tzinfo=dt.UTC).timestamp()
# Cheap pre-checks, so that the common line is never walked twice: a number long or
# large enough to overflow a float, and an escaped UTF-16 surrogate.
_HUGE_NUMBER = re.compile(r"\d{309}|[eE]\+?\d{3}")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class Candidate:
    """A line that passed validation, ready to be inserted."""

    line_no: int
    source: str
    key: str | None
    type: str | None
    event_time: float
    payload: str


@dataclass(frozen=True)
class Rejection:
    """A line that was not accepted, and why."""

    line_no: int
    reason: str
    raw: str


class Invalid(ValueError):
    """The line breaks a rule; the message says which."""


def _reject_constant(name: str) -> Any:
    raise Invalid(f"not JSON: {name} is not a JSON value")


def _parse_int(digits: str) -> int | float:
    # Python refuses to convert integers of more than 4300 digits; the payload keeps
    # the original text anyway, so a huge number only needs to stay a number here.
    try:
        return int(digits)
    except ValueError:
        return float(digits)


# Built once: json.loads with hooks builds a new decoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_BIG_INT_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_parse_int)


def _decode(text: str) -> Any:
    try:
        try:
            return _DECODER.decode(text)
        except json.JSONDecodeError:
            raise
        except ValueError:  # an integer past Python's digit limit: rare, so slower
            return _BIG_INT_DECODER.decode(text)
    except Invalid:
        raise
    except json.JSONDecodeError as exc:
        raise Invalid(f"not JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise Invalid(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise Invalid(f"not JSON: {exc}") from None


def parse_timestamp(value: Any) -> float:
    """Return Unix seconds for an RFC 3339 string with a zone, or a finite number.

    Raises:
        Invalid: the value is missing a zone, unparseable, non-finite or out of range.
    """
    if isinstance(value, bool):
        raise Invalid(
            "field 'timestamp': expected an RFC 3339 string or Unix seconds, not true/false"
        )
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise Invalid("field 'timestamp': outside the years 1 to 9999") from None
        if not math.isfinite(seconds):
            raise Invalid("field 'timestamp': not a finite number")
    elif isinstance(value, str):
        match = _RFC3339.match(value)
        if match is None:
            if re.match(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$", value):
                raise Invalid(f"field 'timestamp': {value!r} has no time zone (add Z or an offset)")
            raise Invalid(f"field 'timestamp': {value!r} is not RFC 3339")
        date, clock, fraction, zone = match.groups()
        fraction = (fraction or "")[:7]  # datetime keeps microseconds
        zone = "+00:00" if zone in ("Z", "z") else zone
        try:
            parsed = dt.datetime.fromisoformat(f"{date}T{clock}{fraction}{zone}")
        except ValueError as exc:
            raise Invalid(f"field 'timestamp': {value!r} is not a valid time ({exc})") from None
        seconds = parsed.timestamp()
    else:
        raise Invalid(
            f"field 'timestamp': expected an RFC 3339 string or Unix seconds, "
            f"got {_json_type(value)}"
        )
    if not _MIN_TS <= seconds <= _MAX_TS:
        raise Invalid("field 'timestamp': outside the years 1 to 9999")
    return seconds


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _optional_text(obj: dict[str, Any], field: str) -> str | None:
    value = obj.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Invalid(f"field {field!r}: expected a string, got {_json_type(value)}")
    return _checked_text(field, value)


def _checked_text(field: str, value: str) -> str:
    if not value or len(value) > MAX_FIELD_CHARS:
        raise Invalid(f"field {field!r}: must be 1 to {MAX_FIELD_CHARS} characters")
    if "\x00" in value:  # PostgreSQL text cannot hold NUL; keep both databases alike
        raise Invalid(f"field {field!r}: contains a NUL character")
    if not value.isascii() and not _encodable(value):
        raise Invalid(f"field {field!r}: contains an unpaired surrogate")
    return value


def _encodable(value: str) -> bool:
    """Tell whether `value` has a UTF-8 form (a lone surrogate has none)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _overflows(value: Any) -> bool:
    """Tell whether a number parsed as infinite: 1e400, or an integer of over 4300
    digits, which `_parse_int` could only turn into a float."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and math.isinf(item):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _key(obj: dict[str, Any]) -> str | None:
    value = obj.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Invalid(f"field 'id': expected a string or an integer, got {_json_type(value)}")
    return _checked_text("id", str(value))


def _depth(value: Any, limit: int) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        if depth > limit:
            return depth
        nxt: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                nxt.extend(item.values())
            elif isinstance(item, list):
                nxt.extend(item)
        level = nxt
    return depth - 1


def parse_line(text: str, line_no: int, *, default_source: str) -> Candidate:
    """Validate one decoded, stripped line.

    Raises:
        Invalid: with a reason that names the field at fault.
    """
    obj = _decode(text)
    if not isinstance(obj, dict):
        raise Invalid(f"not a JSON object (got {_json_type(obj)})")
    # Counting brackets first keeps the depth walk off the common, shallow path.
    if text.count("{") + text.count("[") > MAX_DEPTH and _depth(obj, MAX_DEPTH) > MAX_DEPTH:
        raise Invalid(f"nested deeper than {MAX_DEPTH} levels")
    if "timestamp" not in obj:
        raise Invalid("field 'timestamp': missing")
    candidate = Candidate(
        line_no=line_no,
        source=_optional_text(obj, "source") or default_source,
        key=_key(obj),
        type=_optional_text(obj, "type"),
        event_time=parse_timestamp(obj["timestamp"]),
        payload=text,
    )
    # What is accepted must be readable by every worker and by `inspect`: Python turns
    # 1e400 into inf and cannot read integers of more than 4300 digits, and a lone
    # surrogate escape is no Unicode text (RFC 7493, I-JSON), so no column holds it.
    if _HUGE_NUMBER.search(text) and _overflows(obj):
        raise Invalid(
            "a number is out of range (beyond a 64-bit float, or an integer of over 4300 digits)"
        )
    if _SURROGATE_ESCAPE.search(text) and not _encodable(json.dumps(obj, ensure_ascii=False)):
        raise Invalid("contains an unpaired surrogate escape (\\ud800 to \\udfff)")
    return candidate


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Return seconds for `90s`, `15m`, `12h`, `30d` or `2w`.

    Raises:
        Invalid: the text is not such a duration.
    """
    match = _DURATION.match(text)
    if match is None:
        raise Invalid(f"{text!r} is not a duration such as 90s, 15m, 12h, 30d or 2w")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_since(text: str, *, now: float) -> float:
    """Return Unix seconds for an RFC 3339 time or a duration back from `now`."""
    try:
        return now - parse_duration(text)
    except Invalid:
        pass
    try:
        return parse_timestamp(text)
    except Invalid:
        raise Invalid(
            f"{text!r} is neither an RFC 3339 time with a zone nor a duration such as 12h"
        ) from None
