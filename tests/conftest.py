"""Shared fixtures: real databases (a SQLite file; PostgreSQL where reachable) at head."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from chronos import Chronos
from chronos.db import create_engine, resolve_url
from chronos.states import INITIAL, TRANSITIONS, State

PG_URL = os.environ.get("CHRONOS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_reachable() -> str | None:
    """Return why PostgreSQL cannot be used, or None when it can."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed"
    try:
        engine = sa.create_engine(resolve_url(PG_URL))
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        return f"no PostgreSQL server at {PG_URL}: {type(exc).__name__}"
    return None


_PG_SKIP = _pg_reachable()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite file."""
    url = f"sqlite:///{tmp_path / 'chronos.db'}"
    Chronos(url).migrate()
    return url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A migrated PostgreSQL schema of its own, dropped afterwards."""
    if _PG_SKIP:
        pytest.skip(_PG_SKIP)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(resolve_url(PG_URL))
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    Chronos(url).migrate()
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated database: a SQLite file, then PostgreSQL where a server is reachable."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture
def chronos(db_url: str) -> Iterator[Chronos]:
    with Chronos(db_url) as instance:
        yield instance


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    eng = create_engine(resolve_url(db_url))
    yield eng
    eng.dispose()


@pytest.fixture
def make_event() -> Callable[..., dict[str, Any]]:
    """Build one input object; keyword arguments override or add fields."""
    counter = iter(range(1, 10**9))

    def factory(**overrides: Any) -> dict[str, Any]:
        n = next(counter)
        event: dict[str, Any] = {
            "timestamp": f"2026-01-01T00:00:{n % 60:02d}Z",
            "source": "sensor",
            "id": f"e{n}",
            "type": "reading",
            "value": n,
        }
        event.update(overrides)
        return {k: v for k, v in event.items() if v is not None}

    return factory


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """Write objects (or raw lines, given as str/bytes) to a JSON Lines file."""

    def writer(lines: list[Any], name: str = "input.jsonl") -> Path:
        path = tmp_path / name
        with path.open("wb") as handle:
            for line in lines:
                if isinstance(line, bytes):
                    handle.write(line + b"\n")
                elif isinstance(line, str):
                    handle.write(line.encode() + b"\n")
                else:
                    handle.write(json.dumps(line).encode() + b"\n")
        return path

    return writer


def path_to(state: State) -> list[State]:
    """The states after RECEIVED on a shortest legal path from RECEIVED to `state`."""
    paths: dict[State, list[State]] = {INITIAL: []}
    frontier = [INITIAL]
    while frontier:
        here = frontier.pop(0)
        for a, b in TRANSITIONS:
            if a == here and b not in paths:
                paths[b] = [*paths[a], b]
                frontier.append(b)
    return paths[state]


def run_cli(*args: str, db: str | None = None, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run `python -m chronos` as a real subprocess."""
    command = [sys.executable, "-m", "chronos"]
    if db is not None:
        command += ["--db", db]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300, **kwargs)
