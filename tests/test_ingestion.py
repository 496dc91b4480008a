"""Ingestion through the library API: what is accepted, what is rejected and why, and resumes."""

from __future__ import annotations

import gc
import gzip
import json
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import run_cli

from chronos import Chronos
from chronos.db import READ_ONLY, create_engine, resolve_url
from chronos.schema import event_transitions, events

MakeEvent = Callable[..., dict[str, Any]]
WriteJsonl = Callable[..., Path]

JAN_1_2026 = 1767225600.0  # 2026-01-01T00:00:00Z in Unix seconds
DEEP = 100_000  # nested arrays: far beyond the recursion limit of any JSON parser


def _query(url: str, stmt: sa.Executable) -> list[sa.Row[Any]]:
    engine = create_engine(resolve_url(url))
    try:
        with engine.connect().execution_options(**READ_ONLY) as conn:
            return list(conn.execute(stmt))
    finally:
        engine.dispose()


def _line_numbers(url: str) -> list[int]:
    return [row.line_no for row in _query(url, sa.select(events.c.line_no).order_by(events.c.id))]


def _ingest(url: str, path: Path | str, **options: Any) -> Any:
    with Chronos(url) as chronos:
        return chronos.ingest(str(path), **options)


def _deep(open_: str, close: str) -> bytes:
    return b'{"timestamp": 1767225600, "x": ' + open_.encode() * DEEP + close.encode() * DEEP + b"}"


BAD_LINES = [
    pytest.param(b'{"timestamp": 1767225600, "note": "caf\xe9"}', ["UTF-8"], id="invalid-utf8"),
    pytest.param(b'{"timestamp": 1767225600,', ["not JSON"], id="truncated-json"),
    pytest.param(b"hello world", ["not JSON"], id="plain-text"),
    pytest.param(b'[{"timestamp": 1767225600}]', ["not a JSON object", "array"], id="array"),
    pytest.param(b'"2026-01-01T00:00:00Z"', ["not a JSON object", "string"], id="string"),
    pytest.param(b"1767225600", ["not a JSON object", "number"], id="number"),
    pytest.param(b"null", ["not a JSON object"], id="null"),
    pytest.param(b'{"source": "s", "id": "x"}', ["timestamp", "missing"], id="no-timestamp"),
    pytest.param(b'{"timestamp": "2026-01-01T00:00:00"}', ["timestamp", "zone"], id="naive"),
    pytest.param(b'{"timestamp": "2026-01-01 00:00"}', ["timestamp", "zone"], id="naive-short"),
    pytest.param(b'{"timestamp": "yesterday"}', ["timestamp", "RFC 3339"], id="unparseable"),
    pytest.param(b'{"timestamp": "2026-02-30T00:00:00Z"}', ["timestamp"], id="no-such-day"),
    pytest.param(b'{"timestamp": ""}', ["timestamp"], id="empty-timestamp"),
    pytest.param(b'{"timestamp": NaN}', ["NaN"], id="nan-literal"),
    pytest.param(b'{"timestamp": Infinity}', ["Infinity"], id="infinity-literal"),
    pytest.param(b'{"timestamp": -Infinity}', ["Infinity"], id="minus-infinity-literal"),
    pytest.param(b'{"timestamp": 1e999}', ["timestamp", "finite"], id="overflowing-float"),
    pytest.param(b'{"timestamp": 1e20}', ["timestamp"], id="beyond-year-9999"),
    pytest.param(b'{"timestamp": true}', ["timestamp"], id="boolean-timestamp"),
    pytest.param(b'{"timestamp": null}', ["timestamp"], id="null-timestamp"),
    pytest.param(b'{"timestamp": {"s": 1}}', ["timestamp"], id="object-timestamp"),
    pytest.param(b'{"timestamp": 1767225600, "source": 7}', ["source"], id="source-number"),
    pytest.param(b'{"timestamp": 1767225600, "source": ""}', ["source"], id="source-empty"),
    pytest.param(b'{"timestamp": 1767225600, "id": 1.5}', ["id"], id="id-float"),
    pytest.param(b'{"timestamp": 1767225600, "id": true}', ["id"], id="id-bool"),
    pytest.param(b'{"timestamp": 1767225600, "id": {"k": 1}}', ["id"], id="id-object"),
    pytest.param(b'{"timestamp": 1767225600, "type": ["a"]}', ["type"], id="type-list"),
    pytest.param(_deep("[", "]"), ["nested"], id="100000-nested-arrays"),
    pytest.param(_deep('{"a":', "}"), ["nested"], id="100000-nested-objects"),
    pytest.param(
        b'{"timestamp": 1767225600, "x": ' + b"[" * 70 + b"]" * 70 + b"}",
        ["nested"],
        id="70-nested-arrays",
    ),
    pytest.param(
        b'{"timestamp": 1' + b"0" * 400 + b"}",
        ["timestamp"],
        id="integer-too-large-for-a-float",
    ),
    pytest.param(
        b'{"timestamp": 1767225600, "id": 1' + b"0" * 5000 + b"}",
        ["id"],
        id="integer-beyond-4300-digits",
    ),
]


@pytest.mark.parametrize(("bad", "reason_words"), BAD_LINES)
def test_bad_line_is_rejected_with_its_line_number_and_the_lines_around_it_are_accepted(
    sqlite_url: str,
    make_event: MakeEvent,
    write_jsonl: WriteJsonl,
    bad: bytes,
    reason_words: list[str],
) -> None:
    path = write_jsonl([make_event(), make_event(), bad, make_event()])

    report = _ingest(sqlite_url, path)

    assert (report.accepted, report.rejected, report.duplicates) == (3, 1, 0)
    [rejection] = report.rejections
    assert rejection.line_no == 3
    for word in reason_words:
        assert word in rejection.reason
    assert rejection.raw == bad.decode("utf-8", "replace")[:4096]
    assert _line_numbers(sqlite_url) == [1, 2, 4]


def test_line_larger_than_max_event_bytes_is_rejected(
    sqlite_url: str, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    big = make_event(padding="x" * 300)
    path = write_jsonl([make_event(), big, make_event()])

    report = _ingest(sqlite_url, path, max_event_bytes=256)

    assert (report.accepted, report.rejected) == (2, 1)
    [rejection] = report.rejections
    assert rejection.line_no == 2
    assert "larger than 256 bytes" in rejection.reason
    assert json.dumps(big).startswith(rejection.raw.rstrip("\n"))


def test_line_of_exactly_max_event_bytes_is_accepted_and_one_byte_more_is_not(
    sqlite_url: str, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    line = json.dumps(make_event(padding=""))
    line = line[:-2] + "x" * (256 - len(line)) + line[-2:]
    assert len(line.encode()) == 256
    path = write_jsonl([line, line.replace('"e1"', '"e9"') + " "])

    report = _ingest(sqlite_url, path, max_event_bytes=256)

    assert (report.accepted, report.rejected) == (1, 1)
    assert report.rejections[0].line_no == 2


def test_fifty_megabyte_line_is_rejected_without_holding_it_in_memory(
    sqlite_url: str, make_event: MakeEvent, tmp_path: Path
) -> None:
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as handle:
        handle.write(json.dumps(make_event()).encode() + b"\n")
        handle.write(b'{"timestamp": 1767225600, "pad": "')
        chunk = b"x" * (1 << 20)
        for _ in range(50):
            handle.write(chunk)
        handle.write(b'"}\n')
        handle.write(json.dumps(make_event()).encode() + b"\n")

    with Chronos(sqlite_url) as chronos:
        _ = chronos.engine  # connect and check the schema before measuring
        tracemalloc.start()
        try:
            report = chronos.ingest(str(path))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

    assert (report.accepted, report.rejected) == (2, 1)
    assert report.rejections[0].line_no == 2
    assert "larger than" in report.rejections[0].reason
    assert len(report.rejections[0].raw) <= 4096
    assert peak < 16 * (1 << 20), f"peak {peak / (1 << 20):.1f} MiB for a 50 MiB line"
    assert _line_numbers(sqlite_url) == [1, 3]


def test_blank_lines_are_skipped_not_rejected(
    sqlite_url: str, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    crlf = json.dumps(make_event()).encode() + b"\r"
    path = write_jsonl([make_event(), b"", b"   \t ", b"\r", crlf, make_event()])

    report = _ingest(sqlite_url, path)

    assert (report.accepted, report.rejected, report.blank, report.lines) == (3, 0, 3, 6)
    assert _line_numbers(sqlite_url) == [1, 5, 6]


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        pytest.param("2026-01-01T00:00:00Z", JAN_1_2026, id="rfc3339-z"),
        pytest.param("2026-01-01t00:00:00z", JAN_1_2026, id="rfc3339-lowercase"),
        pytest.param("2026-01-01T01:30:00+01:30", JAN_1_2026, id="rfc3339-offset"),
        pytest.param("2025-12-31T19:00:00-05:00", JAN_1_2026, id="rfc3339-negative-offset"),
        pytest.param("2026-01-01T00:00:00.250Z", JAN_1_2026 + 0.25, id="rfc3339-fraction"),
        pytest.param("2026-01-01T00:00:00.123456789Z", JAN_1_2026 + 0.123456, id="nanoseconds"),
        pytest.param(1767225600, JAN_1_2026, id="unix-int"),
        pytest.param(1767225600.5, JAN_1_2026 + 0.5, id="unix-float"),
        pytest.param(0, 0.0, id="unix-epoch"),
    ],
)
def test_valid_timestamp_forms_are_accepted_as_unix_seconds(
    sqlite_url: str,
    make_event: MakeEvent,
    write_jsonl: WriteJsonl,
    timestamp: Any,
    expected: float,
) -> None:
    path = write_jsonl([make_event(timestamp=timestamp)])

    report = _ingest(sqlite_url, path)

    assert (report.accepted, report.rejected) == (1, 0)
    [row] = _query(sqlite_url, sa.select(events.c.event_time))
    assert row.event_time == pytest.approx(expected, abs=1e-6)


def test_id_may_be_a_string_or_an_integer(
    sqlite_url: str, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    path = write_jsonl([make_event(id="a-1"), make_event(id=42), make_event(id=None)])

    report = _ingest(sqlite_url, path)

    assert (report.accepted, report.rejected) == (3, 0)
    keys = [r.key for r in _query(sqlite_url, sa.select(events.c.key).order_by(events.c.id))]
    assert keys == ["a-1", "42", None]


def test_repeated_id_in_one_file_is_a_duplicate_and_not_accepted_again(
    db_url: str, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    first = make_event(id="k1", value="first")
    path = write_jsonl([first, make_event(id="k2"), make_event(id="k1", value="second")])

    report = _ingest(db_url, path)

    assert (report.accepted, report.duplicates, report.rejected) == (2, 1, 0)
    rows = _query(db_url, sa.select(events.c.key, events.c.payload).order_by(events.c.id))
    assert [(r.key, json.loads(r.payload)["value"]) for r in rows] == [
        ("k1", "first"),
        ("k2", 2),
    ]


def test_repeated_id_across_files_is_a_duplicate_and_not_accepted_again(
    db_url: str, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    one = write_jsonl([make_event(id="a"), make_event(id="b")], name="one.jsonl")
    two = write_jsonl(
        [make_event(id="b"), make_event(id="c"), make_event(id="a")], name="two.jsonl"
    )

    first = _ingest(db_url, one)
    second = _ingest(db_url, two)

    assert (first.accepted, first.duplicates) == (2, 0)
    assert (second.accepted, second.duplicates) == (1, 2)
    keys = [r.key for r in _query(db_url, sa.select(events.c.key).order_by(events.c.id))]
    assert keys == ["a", "b", "c"]


def test_same_id_under_different_sources_are_distinct_events(
    db_url: str, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    path = write_jsonl(
        [
            make_event(id="7", source="north"),
            make_event(id="7", source="south"),
            {
                "timestamp": 1767225600,
                "id": "7",
            },
        ]
    )

    report = _ingest(db_url, path, source="west")

    assert (report.accepted, report.duplicates) == (3, 0)
    rows = _query(db_url, sa.select(events.c.source, events.c.key).order_by(events.c.id))
    assert [tuple(r) for r in rows] == [("north", "7"), ("south", "7"), ("west", "7")]


def test_byte_identical_lines_without_id_are_distinct_events(
    db_url: str, write_jsonl: WriteJsonl
) -> None:
    line = '{"timestamp": 1767225600, "source": "s", "value": 1}'
    path = write_jsonl([line, line, line])

    report = _ingest(db_url, path)

    assert (report.accepted, report.duplicates) == (3, 0)
    assert _line_numbers(db_url) == [1, 2, 3]


def _write_gzip(path: Path, lines: list[bytes]) -> Path:
    with gzip.open(path, "wb") as handle:
        for line in lines:
            handle.write(line + b"\n")
    return path


def test_gzip_input_is_decompressed(sqlite_url: str, make_event: MakeEvent, tmp_path: Path) -> None:
    good = [json.dumps(make_event(source=None)).encode() for _ in range(2)]
    path = _write_gzip(tmp_path / "batch.jsonl.gz", [good[0], b"not json", good[1]])

    report = _ingest(sqlite_url, path)

    assert (report.accepted, report.rejected) == (2, 1)
    assert report.rejections[0].line_no == 2
    rows = _query(sqlite_url, sa.select(events.c.source, events.c.payload))
    assert {(r.source, r.payload) for r in rows} == {("batch.jsonl", g.decode()) for g in good}


def test_gzip_input_file_is_closed_after_the_ingest(
    sqlite_url: str, make_event: MakeEvent, tmp_path: Path
) -> None:
    path = _write_gzip(tmp_path / "batch.jsonl.gz", [json.dumps(make_event()).encode()])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        report = _ingest(sqlite_url, path)
        gc.collect()

    assert report.accepted == 1
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []


@pytest.mark.slow
def test_dash_reads_standard_input(sqlite_url: str, make_event: MakeEvent) -> None:
    lines = [make_event(id="a"), make_event(id=None, source=None), make_event(id="a")]
    text = "".join(json.dumps(line) + "\n" for line in lines) + "oops\n"

    result = run_cli("ingest", "-", "--json", db=sqlite_url, input=text)

    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["accepted"], summary["duplicates"], summary["rejected"]) == (2, 1, 1)
    assert "line 4" in result.stderr
    rows = _query(sqlite_url, sa.select(events.c.source, events.c.line_no).order_by(events.c.id))
    assert [tuple(r) for r in rows] == [("sensor", 1), ("stdin", 2)]


def test_rejects_file_holds_each_rejected_line_as_json(
    sqlite_url: str, make_event: MakeEvent, write_jsonl: WriteJsonl, tmp_path: Path
) -> None:
    path = write_jsonl(
        [make_event(), b"{broken", b"\xff\xfe", make_event(), b"[1]", b'{"timestamp": "x"}']
    )
    rejects = tmp_path / "rejects.jsonl"

    report = _ingest(sqlite_url, path, rejects=str(rejects))

    assert (report.accepted, report.rejected) == (2, 4)
    records = [json.loads(line) for line in rejects.read_text("utf-8").splitlines()]
    assert [set(r) for r in records] == [{"line_no", "reason", "raw"}] * 4
    assert [r["line_no"] for r in records] == [2, 3, 5, 6]
    assert [r["raw"] for r in records] == ["{broken", "\ufffd\ufffd", "[1]", '{"timestamp": "x"}']
    assert "not JSON" in records[0]["reason"]
    assert "UTF-8" in records[1]["reason"]
    assert "not a JSON object" in records[2]["reason"]
    assert "timestamp" in records[3]["reason"]


def test_payload_is_stored_unchanged(db_url: str, write_jsonl: WriteJsonl) -> None:
    line = (
        '{"z": [1, 2.50, {"b": null}],   "timestamp":"2026-01-01T00:00:00Z",'
        ' "text": "caf\u00e9 \\u00e9 \\"q\\"", "big": 12345678901234567890, "a": 1e3}'
    )
    path = write_jsonl([line])

    with Chronos(db_url) as chronos:
        report = chronos.ingest(str(path))
        [row] = _query(db_url, sa.select(events.c.id, events.c.payload))
        detail = chronos.inspect(row.id)

    assert report.accepted == 1
    assert row.payload == line
    assert detail["payload"] == json.loads(line)
    assert list(detail["payload"]) == ["z", "timestamp", "text", "big", "a"]


def test_a_number_python_cannot_read_back_is_rejected_not_accepted_half_usable(
    sqlite_url: str, write_jsonl: WriteJsonl
) -> None:
    # Accepted means every worker and `inspect` can read it: an integer of over 4300
    # digits or 1e400 could be stored but never processed or shown.
    near = '{"timestamp": 1767225600, "reading": 1' + "0" * 4000 + "}"
    path = write_jsonl(
        [
            '{"timestamp": 1767225600, "reading": 1' + "0" * 5000 + "}",
            '{"timestamp": 1767225600, "reading": 1e400}',
            near,
        ]
    )

    report = _ingest(sqlite_url, path)

    assert (report.accepted, report.rejected) == (1, 2)
    assert all("out of range" in r.reason for r in report.rejections)
    [row] = _query(sqlite_url, sa.select(events.c.payload))
    assert row.payload == near


def test_ingested_events_are_buffered_with_their_whole_history(
    db_url: str, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    path = write_jsonl([make_event(id=None) if n % 2 else make_event() for n in range(5)])

    with Chronos(db_url) as chronos:
        report = chronos.ingest(str(path), batch=2)
        states = _query(db_url, sa.select(events.c.id, events.c.state).order_by(events.c.id))
        history = chronos.inspect(states[0].id)["history"]

    assert report.accepted == 5
    assert {r.state for r in states} == {"BUFFERED"}
    steps = _query(
        db_url,
        sa.select(
            event_transitions.c.event_id,
            event_transitions.c.from_state,
            event_transitions.c.to_state,
            event_transitions.c.actor,
        ).order_by(event_transitions.c.id),
    )
    by_event: dict[int, list[tuple[str | None, str, str]]] = {}
    for step in steps:
        by_event.setdefault(step.event_id, []).append((step.from_state, step.to_state, step.actor))
    expected = [
        (None, "RECEIVED", "ingestion"),
        ("RECEIVED", "ACCEPTED", "ingestion"),
        ("ACCEPTED", "BUFFERED", "buffer"),
    ]
    assert by_event == {r.id: expected for r in states}
    assert [(h["from_state"], h["to_state"]) for h in history] == [
        (None, "RECEIVED"),
        ("RECEIVED", "ACCEPTED"),
        ("ACCEPTED", "BUFFERED"),
    ]


def test_source_comes_from_the_line_then_the_option_then_the_file_name(
    sqlite_url: str, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    named = write_jsonl([make_event(source=None), make_event(source="own")], name="fleet.jsonl")
    other = write_jsonl([make_event(source=None), make_event(source="own")], name="other.jsonl")

    _ingest(sqlite_url, named)
    _ingest(sqlite_url, other, source="ships")

    rows = _query(sqlite_url, sa.select(events.c.source).order_by(events.c.id))
    assert [r.source for r in rows] == ["fleet.jsonl", "own", "ships", "own"]


def test_rerun_of_a_completed_file_accepts_nothing_new(
    db_url: str, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    path = write_jsonl([make_event(id=None), make_event(), make_event(id=None), b"bad"])

    first = _ingest(db_url, path, batch=2)
    second = _ingest(db_url, path, batch=2)

    assert (first.accepted, first.rejected, first.resumed_at_line) == (3, 1, 0)
    assert second.resumed_at_line == 4
    assert (second.lines, second.accepted, second.duplicates, second.rejected) == (0, 0, 0, 0)
    assert (second.total_accepted, second.total_rejected) == (3, 1)
    assert second.run_id == first.run_id
    assert _line_numbers(db_url) == [1, 2, 3]


def test_rerun_of_a_grown_file_accepts_only_the_appended_lines(
    db_url: str, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    path = write_jsonl([make_event(id=None), make_event(id=None), make_event()])
    first = _ingest(db_url, path)
    with path.open("ab") as handle:
        for line in [make_event(id=None), make_event(id=None)]:
            handle.write(json.dumps(line).encode() + b"\n")

    second = _ingest(db_url, path)

    assert first.accepted == 3
    assert (second.resumed_at_line, second.lines, second.accepted) == (3, 2, 2)
    assert second.total_accepted == 5
    assert _line_numbers(db_url) == [1, 2, 3, 4, 5]


class _Interrupted(Exception):
    """Stands for a crash right after a batch was committed."""


def test_interrupted_ingest_resumes_after_the_last_committed_batch(
    db_url: str, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    lines = [make_event(id=None) if n % 3 else make_event() for n in range(10)]
    path = write_jsonl(lines)

    def interrupt(_offset: int, _lines: int) -> None:
        raise _Interrupted

    with pytest.raises(_Interrupted):
        _ingest(db_url, path, batch=4, progress=interrupt)
    committed = _line_numbers(db_url)
    resumed = _ingest(db_url, path, batch=4)

    assert committed == [1, 2, 3, 4]
    assert (resumed.resumed_at_line, resumed.lines, resumed.accepted) == (4, 6, 6)
    assert resumed.duplicates == 0
    assert _line_numbers(db_url) == list(range(1, 11))


def test_rewritten_file_is_treated_as_new_input(
    db_url: str, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    path = write_jsonl([make_event(id=None, value=1), make_event(id=None, value=2)])
    first = _ingest(db_url, path)
    size = path.stat().st_size
    # Same length, different bytes: only the content hash can tell.
    write_jsonl([make_event(id=None, value=3), make_event(id=None, value=4)])

    second = _ingest(db_url, path)

    assert path.stat().st_size == size
    assert (second.resumed_at_line, second.accepted) == (0, 2)
    assert second.run_id != first.run_id
    values = [
        json.loads(r.payload)["value"]
        for r in _query(db_url, sa.select(events.c.payload).order_by(events.c.id))
    ]
    assert values == [1, 2, 3, 4]


def test_rewritten_and_longer_file_is_read_from_its_first_line(
    db_url: str, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    path = write_jsonl([make_event(id="a"), make_event(id=None, value="old")])
    _ingest(db_url, path)
    write_jsonl(
        [make_event(id="a"), make_event(id=None, value="new"), make_event(id="b")],
    )

    second = _ingest(db_url, path)

    assert second.resumed_at_line == 0
    assert (second.accepted, second.duplicates) == (2, 1)
    assert _line_numbers(db_url) == [1, 2, 2, 3]


def test_nul_character_in_a_field_is_rejected_like_any_bad_field(
    db_url: str, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    path = write_jsonl(
        [
            make_event(),
            '{"timestamp": 1767225600, "source": "a\\u0000b"}',
            '{"timestamp": 1767225600, "id": "x\\u0000"}',
            make_event(),
        ]
    )

    report = _ingest(db_url, path)

    assert (report.accepted, report.rejected) == (2, 2)
    assert [r.line_no for r in report.rejections] == [2, 3]
    assert "source" in report.rejections[0].reason
    assert "id" in report.rejections[1].reason


def test_a_nan_literal_is_rejected_with_one_plain_reason(
    sqlite_url: str, write_jsonl: Callable[..., Path]
) -> None:
    path = write_jsonl(['{"timestamp": NaN}', '{"timestamp": 1, "v": -Infinity}'])
    report = Chronos(sqlite_url).ingest(str(path))
    assert [r.reason for r in report.rejections] == [
        "not JSON: NaN is not a JSON value",
        "not JSON: -Infinity is not a JSON value",
    ]


def test_a_run_of_the_file_while_it_was_empty_does_not_hide_the_earlier_run(
    sqlite_url: str, write_jsonl: WriteJsonl, tmp_path: Path
) -> None:
    path = write_jsonl(['{"timestamp": 1}', '{"timestamp": 2}'])
    content = path.read_bytes()
    assert _ingest(sqlite_url, path).accepted == 2
    path.write_bytes(b"")
    assert _ingest(sqlite_url, path).accepted == 0
    path.write_bytes(content)

    again = _ingest(sqlite_url, path)

    assert (again.accepted, again.resumed_at_line) == (0, 2)
    assert len(_query(sqlite_url, sa.select(events.c.id))) == 2


def test_a_resume_without_rejects_keeps_the_rejects_written_before(
    sqlite_url: str, write_jsonl: WriteJsonl, tmp_path: Path
) -> None:
    rejects = tmp_path / "rejects.jsonl"
    path = write_jsonl(["bad1", '{"timestamp": 1}'])
    _ingest(sqlite_url, path, rejects=str(rejects))
    with path.open("ab") as handle:
        handle.write(b'{"timestamp": 2}\n')
    _ingest(sqlite_url, path)  # no --rejects this time
    with path.open("ab") as handle:
        handle.write(b"bad2\n")

    _ingest(sqlite_url, path, rejects=str(rejects))

    raws = [json.loads(line)["raw"] for line in rejects.read_text().splitlines()]
    assert raws == ["bad1", "bad2"]


def test_a_half_written_last_line_is_left_for_the_next_run(sqlite_url: str, tmp_path: Path) -> None:
    path = tmp_path / "growing.jsonl"
    path.write_bytes(b'{"timestamp": 1}\n{"timestamp": 2, "v"')

    first = _ingest(sqlite_url, path)
    assert (first.accepted, first.rejected, first.held_tail_bytes) == (1, 0, 20)

    with path.open("ab") as handle:
        handle.write(b': 7}\n{"timestamp": 3}')  # the producer finishes; a whole tail
    second = _ingest(sqlite_url, path)

    assert (second.accepted, second.rejected, second.held_tail_bytes) == (2, 0, 0)
    rows = _query(sqlite_url, sa.select(events.c.line_no, events.c.payload).order_by(events.c.id))
    assert rows == [
        (1, '{"timestamp": 1}'),
        (2, '{"timestamp": 2, "v": 7}'),
        (3, '{"timestamp": 3}'),
    ]


def test_stdin_rejects_an_unfinished_last_line_since_it_cannot_be_read_again(
    sqlite_url: str,
) -> None:
    done = run_cli("ingest", "-", db=sqlite_url, input='{"timestamp": 1}\n{"timestamp": 2')
    assert done.returncode == 1
    assert "line 2: not JSON" in done.stderr
