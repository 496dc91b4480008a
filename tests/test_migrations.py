"""Schema versions: Alembic builds exactly `chronos.schema`, undoes it, and guards the version.

`upgrade head` must yield the metadata of `schema.py` (what `alembic check` checks),
`downgrade base` must leave nothing behind, and every command but `migrate` must
refuse a database that is missing, empty or at a revision this code does not know.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from chronos import Chronos, errors, migrate, schema
from chronos.db import create_engine, resolve_url
from chronos.states import CLAIMABLE, State

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bare_engine(db_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(resolve_url(db_url))
    yield engine
    engine.dispose()


def _schema_diff(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), schema.metadata))


def _tables(engine: sa.Engine) -> set[str]:
    return {t for t in sa.inspect(engine).get_table_names() if not t.startswith("sqlite_")}


def _triggers(engine: sa.Engine) -> dict[str, str]:
    """Trigger name -> its SQL (SQLite) or the function it runs (PostgreSQL)."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            query = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
        else:
            query = (
                "SELECT t.tgname, p.proname FROM pg_trigger t "
                "JOIN pg_proc p ON p.oid = t.tgfoid "
                "JOIN pg_class c ON c.oid = t.tgrelid "
                "WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace"
            )
        return {row[0]: row[1] for row in conn.exec_driver_sql(query)}


def _chronos_functions(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.text(
                    "SELECT proname FROM pg_proc WHERE proname LIKE :prefix "
                    "AND pronamespace = current_schema()::regnamespace"
                ),
                {"prefix": "chronos%"},
            ).scalars()
        )


def _index_predicates(engine: sa.Engine) -> dict[str, str]:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql LIKE '%WHERE%'"
            )
        else:
            rows = conn.exec_driver_sql(
                "SELECT c.relname, pg_get_expr(i.indpred, i.indrelid) FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE i.indpred IS NOT NULL "
                "AND c.relnamespace = current_schema()::regnamespace"
            )
        return {row[0]: row[1].split("WHERE", 1)[-1] for row in rows}


def _version_rows(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars())


def test_upgrade_head_yields_exactly_the_schema_of_schema_py(bare_engine: sa.Engine) -> None:
    assert _schema_diff(bare_engine) == []
    assert _tables(bare_engine) == {*schema.metadata.tables, "alembic_version"}


def test_upgrade_head_creates_the_triggers_schema_py_derives(bare_engine: sa.Engine) -> None:
    found = _triggers(bare_engine)
    if bare_engine.dialect.name == "sqlite":
        assert sorted(found.values()) == sorted(schema.sqlite_triggers())
    else:
        created = [ddl.split() for ddl in schema.postgresql_triggers()]
        expected = {w[2]: w[-1].split("(")[0] for w in created if w[1] == "TRIGGER"}
        assert found == expected
        assert _chronos_functions(bare_engine) == set(expected.values())


def test_upgrade_head_makes_the_claim_index_cover_only_claimable_states(
    bare_engine: sa.Engine,
) -> None:
    predicates = _index_predicates(bare_engine)
    dialect = bare_engine.dialect.name
    partial = {
        index.name
        for table in schema.metadata.tables.values()
        for index in table.indexes
        if index.dialect_options[dialect]["where"] is not None
    }
    assert set(predicates) == partial
    for state in State:
        assert (f"'{state.value}'" in predicates["events_ready"]) == (state in CLAIMABLE)
        assert (f"'{state.value}'" in predicates["events_leases"]) == (state == State.PROCESSING)


def test_downgrade_base_leaves_no_table_trigger_or_function_and_upgrade_works_again(
    db_url: str, bare_engine: sa.Engine
) -> None:
    triggers = _triggers(bare_engine)
    command.downgrade(migrate.alembic_config(bare_engine), "base")

    assert _tables(bare_engine) <= {"alembic_version"}
    assert _triggers(bare_engine) == {}
    if bare_engine.dialect.name == "postgresql":
        assert _chronos_functions(bare_engine) == set()
    with pytest.raises(errors.NotMigrated, match="run `chronos migrate`"):
        Chronos(db_url).stats()

    assert Chronos(db_url).migrate() == migrate.head()
    assert _schema_diff(bare_engine) == []
    assert _triggers(bare_engine) == triggers
    with Chronos(db_url) as chronos:
        assert chronos.stats() is not None


def test_migrate_is_idempotent(db_url: str, bare_engine: sa.Engine) -> None:
    before = (_tables(bare_engine), _triggers(bare_engine), _index_predicates(bare_engine))

    assert Chronos(db_url).migrate() == migrate.head()
    assert Chronos(db_url).migrate() == migrate.head()

    assert _version_rows(bare_engine) == [migrate.head()]
    assert (_tables(bare_engine), _triggers(bare_engine), _index_predicates(bare_engine)) == before
    assert _schema_diff(bare_engine) == []


def test_commands_refuse_a_database_at_a_revision_this_code_does_not_know(
    db_url: str, bare_engine: sa.Engine
) -> None:
    with bare_engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_from_the_future'")

    with pytest.raises(errors.NotMigrated, match="9999_from_the_future"):
        Chronos(db_url).stats()
    with pytest.raises(errors.NotMigrated, match="9999_from_the_future"):
        Chronos(db_url).migrate()
    assert _version_rows(bare_engine) == ["9999_from_the_future"]


@pytest.mark.parametrize("content", ["empty", "unrelated table"])
def test_commands_refuse_a_sqlite_file_without_the_schema(tmp_path: Path, content: str) -> None:
    path = tmp_path / "plain.db"
    with sqlite3.connect(path) as conn:
        if content == "unrelated table":
            conn.execute("CREATE TABLE notes (body TEXT)")
    conn.close()

    with pytest.raises(errors.NotMigrated, match="run `chronos migrate`"):
        Chronos(str(path)).stats()
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert tables == ({"notes"} if content == "unrelated table" else set())


def test_commands_refuse_a_missing_file_without_creating_it(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"

    with pytest.raises(errors.NotMigrated, match="run `chronos migrate`"):
        Chronos(f"sqlite:///{path}").stats()
    with pytest.raises(errors.NotMigrated):
        Chronos(str(path)).inspect(1)

    assert list(tmp_path.iterdir()) == []


def test_migrate_into_a_missing_folder_fails_with_a_clear_message(tmp_path: Path) -> None:
    folder = tmp_path / "no" / "such"

    with pytest.raises(errors.DatabaseError) as caught:
        Chronos(str(folder / "chronos.db")).migrate()

    assert not isinstance(caught.value, errors.NotMigrated)
    assert str(folder) in str(caught.value)
    assert "folder" in str(caught.value)
    assert not (tmp_path / "no").exists()


@pytest.mark.slow
def test_a_built_wheel_carries_the_migrations(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), ROOT],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    [wheel] = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    revisions = [p.name for p in (ROOT / "migrations" / "versions").glob("*.py")]
    assert revisions
    assert "chronos/_migrations/env.py" in names
    assert "chronos/_migrations/script.py.mako" in names
    for name in revisions:
        assert f"chronos/_migrations/versions/{name}" in names
    assert "chronos/py.typed" in names
