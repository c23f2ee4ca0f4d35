"""Alembic, driven from code: `alignd migrate` upgrades, services refuse an unmigrated schema."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from services.db.engine import get_engine
from services.errors import DatabaseNotMigrated

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config(""))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(url: str) -> str | None:
    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def ensure_migrated(url: str) -> None:
    """Raise DatabaseNotMigrated unless the schema is at the code's head revision."""
    current, head = current_revision(url), head_revision()
    if current != head:
        raise DatabaseNotMigrated(
            f"database schema is at revision {current or 'none'} but this alignd needs {head}; "
            "run `alignd migrate` first"
        )
