"""Engines, sessions and migrations for the two supported databases.

- SQLite through aiosqlite is the embedded default:
  `sqlite+aiosqlite:///var/pbx.db`.
- PostgreSQL through asyncpg is the production database:
  `postgresql+asyncpg://user:secret@host:5432/name`.

A URL may carry a password: log `redact_url(url)`, never the URL itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

log = logging.getLogger(__name__)

# The repository's migrations directory (alembic.ini sits beside it).
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

SQLITE_BUSY_TIMEOUT_MS = 10_000

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}
_SECRET_QUERY_KEYS = frozenset({"password", "passwd", "sslpassword", "sslkey"})


class DatabaseUrlError(ValueError):
    """A database URL this service cannot use. The message holds no password."""


def redact_url(url: str | URL) -> str:
    """`url` with its password (and secret query parameters) masked, for logs."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        # Unparseable means we cannot tell where a secret would be: show nothing.
        return "<unparseable database URL>"
    query = {
        key: ("***" if key.lower() in _SECRET_QUERY_KEYS else value)
        for key, value in parsed.query.items()
    }
    return parsed.set(query=query).render_as_string(hide_password=True)


def parse_database_url(url: str | URL) -> URL:
    """Parse `url` and pin the async driver (`postgresql://` means asyncpg)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseUrlError(f"not a database URL: {redact_url(url)}") from exc
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise DatabaseUrlError(
            f"unsupported database {parsed.drivername!r} in {redact_url(parsed)}:"
            " use sqlite+aiosqlite:// or postgresql+asyncpg://"
        )
    return parsed.set(drivername=driver)


def make_engine(url: str | URL, *, echo: bool = False) -> AsyncEngine:
    """An `AsyncEngine` for SQLite (aiosqlite) or PostgreSQL (asyncpg).

    The caller owns the engine: `await engine.dispose()` when done.
    """
    parsed = parse_database_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = _make_sqlite_engine(parsed, echo=echo)
    else:
        engine = create_async_engine(
            parsed,
            echo=echo,
            pool_size=10,
            max_overflow=10,
            pool_timeout=30,
            # Survive a PostgreSQL restart or an idle-killing proxy.
            pool_pre_ping=True,
            pool_recycle=1800,
            connect_args={
                "server_settings": {"application_name": "pbx-controller", "TimeZone": "UTC"},
            },
        )
    log.info("database engine for %s", redact_url(parsed))
    return engine


def _make_sqlite_engine(url: URL, *, echo: bool) -> AsyncEngine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if not in_memory and url.query.get("uri") != "true":
        # The embedded default lives in var/; create it rather than fail at start-up.
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, echo=echo)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Per connection: SQLite forgets these pragmas on every new connection.
        # The driver's default (legacy) transaction control is kept on purpose:
        # SELECTs outside a write do not hold a snapshot, so concurrent writers
        # wait on the busy timeout instead of failing with SQLITE_BUSY_SNAPSHOT.
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            if not in_memory:
                # Readers do not block the writer; persistent in the file.
                cursor.execute("PRAGMA journal_mode=WAL")
            # WAL defaults to NORMAL on some builds; a committed CDR must survive
            # power loss, because the outbox forgets it once the commit returns.
            cursor.execute("PRAGMA synchronous=FULL")
        finally:
            cursor.close()

    return engine


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions whose objects stay readable after commit (no lazy refresh in async)."""
    return async_sessionmaker(engine, expire_on_commit=False)


# --------------------------------------------------------------------------
# Migrations
# --------------------------------------------------------------------------


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic `Config` for the repository's migrations, without alembic.ini.

    With `connection`, `migrations/env.py` runs on it instead of opening its own.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


async def _run_alembic(url: str | URL, operation: Callable[[Config], object]) -> None:
    # Alembic is synchronous: run it on one async connection through
    # run_sync (a greenlet), so it works inside a running event loop without
    # a second loop or a thread.
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(lambda sync: operation(alembic_config(sync)))
            await connection.commit()
    finally:
        await engine.dispose()


async def upgrade_to_head(url: str | URL) -> None:
    """Apply every pending migration to the database at `url`."""
    log.info("migrating %s to head", redact_url(url))
    await _run_alembic(url, lambda config: command.upgrade(config, "head"))


async def downgrade_to(url: str | URL, revision: str) -> None:
    """Revert the database at `url` to `revision` (`"base"`: drop everything)."""
    log.warning("downgrading %s to %s", redact_url(url), revision)
    await _run_alembic(url, lambda config: command.downgrade(config, revision))


async def current_revision(url: str | URL) -> str | None:
    """The migration revision the database at `url` is at; None if unmigrated."""
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await engine.dispose()


__all__ = [
    "DatabaseUrlError",
    "alembic_config",
    "current_revision",
    "downgrade_to",
    "make_engine",
    "make_sessionmaker",
    "parse_database_url",
    "redact_url",
    "upgrade_to_head",
]
