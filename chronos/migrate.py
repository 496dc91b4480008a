"""Schema versions: run the Alembic revisions and refuse a database that is not at head."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Engine

from chronos import errors


def _script_location() -> str:
    # A wheel carries the revisions inside the package; a source checkout keeps them
    # at the top level, as the project layout asks.
    bundled = Path(__file__).with_name("_migrations")
    if bundled.is_dir():
        return str(bundled)
    return str(Path(__file__).resolve().parent.parent / "migrations")


def alembic_config(engine: Engine | None = None) -> Config:
    """Return an Alembic config pointing at Chronos' revisions."""
    config = Config()
    config.set_main_option("script_location", _script_location())
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def head() -> str:
    """Return the newest revision this version of Chronos knows."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


def current(engine: Engine) -> str | None:
    """Return the revision the database is at, None when it has no schema."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _known(revision: str) -> bool:
    """Tell whether this version of Chronos has `revision`."""
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:  # alembic raises for an id it cannot resolve
        return False


def upgrade(engine: Engine) -> str:
    """Create or upgrade the schema to head; idempotent. Return the revision."""
    found = current(engine)
    if found is not None and not _known(found):
        raise errors.NotMigrated(
            f"the database is at revision {found}, newer than this Chronos knows; upgrade Chronos"
        )
    command.upgrade(alembic_config(engine), "head")
    return head()


def require_current(engine: Engine) -> None:
    """Refuse a database that is missing, behind or ahead of this version's schema.

    Raises:
        NotMigrated: with a message that says what to do.
    """
    try:
        found = current(engine)
    except sa.exc.DBAPIError as exc:
        from chronos.db import translate

        raise translate(exc, "reading the schema version") from exc
    expected = head()
    if found == expected:
        return
    if found is None:
        raise errors.NotMigrated("the database has no Chronos schema; run `chronos migrate`")
    if not _known(found):
        raise errors.NotMigrated(
            f"the database is at revision {found}, newer than this Chronos knows; upgrade Chronos"
        )
    raise errors.NotMigrated(
        f"the database is at revision {found}, behind {expected}; run `chronos migrate`"
    )
