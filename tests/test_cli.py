"""The `chronos` command as a user runs it: exit codes, messages and output formats.

Every test starts `python -m chronos` as a real process in its own folder, with
`CHRONOS_DB` removed from the environment unless the test sets it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from chronos import Chronos

pytestmark = pytest.mark.slow

MakeEvent = Callable[..., dict[str, Any]]
WriteJsonl = Callable[..., Path]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CHRONOS_DB"}
    env.update(extra)
    return env


def _run(
    cwd: Path, *args: str, db: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, db=db, cwd=cwd, env=env or _env())


def _assert_error_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """The command failed with `code` and said why in one line, without a traceback."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0]


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = _run(tmp_path, "--help")

    assert result.returncode == 0, result.stderr
    for command in ("migrate", "ingest", "inspect", "stats"):
        assert command in result.stdout


def test_migrate_makes_a_bare_path_a_sqlite_file_and_is_idempotent(tmp_path: Path) -> None:
    first = _run(tmp_path, "migrate", db="events.db")
    second = _run(tmp_path, "migrate", db="events.db")

    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert "revision" in first.stdout
    assert first.stdout == second.stdout
    assert (tmp_path / "events.db").read_bytes()[:16] == b"SQLite format 3\x00"
    assert not (tmp_path / "chronos.db").exists()


def test_commands_on_a_database_that_is_not_migrated_exit_2_and_say_run_migrate(
    tmp_path: Path, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    good = write_jsonl([make_event()])
    missing = tmp_path / "missing.db"
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()

    for args in (["stats"], ["inspect", "1"], ["ingest", str(good)]):
        _assert_error_line(_run(tmp_path, *args, db=str(missing)), 2, "chronos migrate")
    no_schema = _run(tmp_path, "ingest", str(good), db=f"sqlite:///{empty}")

    assert not missing.exists()
    _assert_error_line(no_schema, 2, "chronos migrate")


def test_ingest_of_good_lines_exits_0(
    sqlite_url: str, tmp_path: Path, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    path = write_jsonl([make_event(), make_event(id=None)])

    result = _run(tmp_path, "ingest", str(path), db=sqlite_url)

    assert result.returncode == 0, result.stderr
    assert "accepted 2" in result.stdout
    assert result.stderr == ""


def test_ingest_with_a_rejected_line_exits_1_and_keeps_the_accepted_lines(
    sqlite_url: str, tmp_path: Path, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    path = write_jsonl([make_event(), b'{"timestamp": "soon"}', make_event()])

    result = _run(tmp_path, "ingest", str(path), "--json", db=sqlite_url)
    stats = _run(tmp_path, "stats", "--json", db=sqlite_url)

    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["accepted"], summary["duplicates"], summary["rejected"]) == (2, 0, 1)
    assert "line 2:" in result.stderr
    assert "timestamp" in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(stats.stdout)["counts"]["BUFFERED"] == 2


def test_ingest_of_a_missing_or_unreadable_file_exits_2(tmp_path: Path, sqlite_url: str) -> None:
    not_gzip = tmp_path / "plain.jsonl.gz"
    not_gzip.write_text('{"timestamp": 1767225600}\n')

    missing = _run(tmp_path, "ingest", str(tmp_path / "nope.jsonl"), db=sqlite_url)
    folder = _run(tmp_path, "ingest", str(tmp_path), db=sqlite_url)
    corrupt = _run(tmp_path, "ingest", str(not_gzip), db=sqlite_url)

    _assert_error_line(missing, 2, "nope.jsonl")
    _assert_error_line(folder, 2, "cannot read")
    _assert_error_line(corrupt, 2, "plain.jsonl.gz")


def test_bad_usage_exits_2(
    sqlite_url: str, tmp_path: Path, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    path = str(write_jsonl([make_event()]))

    unknown_flag = _run(tmp_path, "ingest", path, "--no-such-flag", db=sqlite_url)
    not_an_id = _run(tmp_path, "inspect", "forty-two", db=sqlite_url)
    bad_sync = _run(tmp_path, "--sync", "sometimes", "stats", db=sqlite_url)
    tiny_limit = _run(tmp_path, "ingest", path, "--max-event-bytes", "3", db=sqlite_url)

    for result in (unknown_flag, not_an_id):
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
    assert "--no-such-flag" in unknown_flag.stderr
    _assert_error_line(bad_sync, 2, "FULL")
    _assert_error_line(tiny_limit, 2, "max-event-bytes")
    assert Chronos(sqlite_url).stats()["total"] == 0


def test_inspect_of_a_missing_event_exits_1(sqlite_url: str, tmp_path: Path) -> None:
    _assert_error_line(_run(tmp_path, "inspect", "999", db=sqlite_url), 1, "999")


def test_inspect_shows_the_event_and_its_json_has_the_history(
    sqlite_url: str, tmp_path: Path, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    with Chronos(sqlite_url) as chronos:
        chronos.ingest(str(write_jsonl([make_event(id="probe-1", value=7)])))

    table = _run(tmp_path, "inspect", "1", db=sqlite_url)
    as_json = _run(tmp_path, "inspect", "1", "--json", db=sqlite_url)

    assert (table.returncode, as_json.returncode) == (0, 0), table.stderr + as_json.stderr
    assert "BUFFERED" in table.stdout
    assert "probe-1" in table.stdout
    detail = json.loads(as_json.stdout)
    assert (detail["id"], detail["state"], detail["key"]) == (1, "BUFFERED", "probe-1")
    assert detail["payload"]["value"] == 7
    assert [step["to_state"] for step in detail["history"]] == [
        "RECEIVED",
        "ACCEPTED",
        "BUFFERED",
    ]


def test_stats_json_has_counts_by_state(
    sqlite_url: str, tmp_path: Path, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    with Chronos(sqlite_url) as chronos:
        chronos.ingest(str(write_jsonl([make_event() for _ in range(3)])))

    result = _run(tmp_path, "stats", "--json", db=sqlite_url)

    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["counts"]["BUFFERED"] == 3
    assert set(data["counts"]) >= {"RECEIVED", "ACCEPTED", "BUFFERED", "PROCESSED"}
    assert (data["total"], data["backlog"]) == (3, 3)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = _run(tmp_path, "--debug", "stats", db=str(tmp_path / "missing.db"))

    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "NotMigrated" in result.stderr


def test_chronos_db_environment_variable_names_the_database(tmp_path: Path) -> None:
    env = _env(CHRONOS_DB=str(tmp_path / "from-env.db"))

    migrated = _run(tmp_path, "migrate", env=env)
    stats = _run(tmp_path, "stats", "--json", env=env)
    overridden = _run(tmp_path, "stats", db=str(tmp_path / "other.db"), env=env)

    assert (migrated.returncode, stats.returncode) == (0, 0), migrated.stderr + stats.stderr
    assert (tmp_path / "from-env.db").exists()
    assert json.loads(stats.stdout)["total"] == 0
    _assert_error_line(overridden, 2, "other.db")  # --db wins over CHRONOS_DB
    assert not (tmp_path / "chronos.db").exists()


def test_default_database_is_chronos_db_in_the_current_folder(tmp_path: Path) -> None:
    result = _run(tmp_path, "migrate")

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "chronos.db").exists()


def test_unreachable_postgresql_exits_2_with_one_line(tmp_path: Path) -> None:
    result = _run(tmp_path, "stats", db="postgresql://postgres@127.0.0.1:1/none")

    _assert_error_line(result, 2, "127.0.0.1")


@pytest.mark.slow
def test_inspect_json_returns_the_payload_and_result_byte_for_byte(
    sqlite_url: str, tmp_path: Path
) -> None:
    line = (
        '{"timestamp": 1E9, "big": 123456789012345678901234567890, "f": 1.50,'
        ' "s": "\\u00e9\\u0000 \'; DROP TABLE events; --", "n":[ 1 ,2]}'
    )
    path = tmp_path / "raw.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with Chronos(sqlite_url) as chronos:
        chronos.ingest(str(path))
        chronos.worker(lambda event: {"echo": event.payload["big"]}).run(drain=True)
    done = run_cli("inspect", "1", "--json", db=sqlite_url)
    assert done.returncode == 0, done.stderr
    assert f'"payload": {line},' in done.stdout
    assert '"result": {"echo": 123456789012345678901234567890}' in done.stdout
    assert json.loads(done.stdout)["payload"] == json.loads(line)


@pytest.mark.slow
def test_demo_refuses_an_existing_database_given_as_a_url(sqlite_url: str, tmp_path: Path) -> None:
    path = tmp_path / "real.jsonl"
    path.write_text('{"timestamp": 1, "demo": "broken"}\n', encoding="utf-8")
    with Chronos(sqlite_url) as chronos:
        chronos.ingest(str(path))

    done = run_cli("demo", db=sqlite_url)

    assert done.returncode == 2
    assert "the demo needs a new database" in done.stderr
    with Chronos(sqlite_url) as chronos:
        assert chronos.stats()["counts"]["BUFFERED"] == 1  # the real queue is untouched


@pytest.mark.slow
def test_demo_outcome_adds_up(tmp_path: Path) -> None:
    done = run_cli("demo", "--json", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["accepted"] == outcome["processed"] + outcome["failed_terminal"]
    assert (outcome["rejected"], outcome["duplicates"], outcome["unfinished"]) == (3, 2, 0)
    assert outcome["failed_terminal"] == 3
    assert (tmp_path / "chronos-demo.db").exists()
