"""Alembic environment for pbx-controller: async engines, both dialects.

Two ways in:

- the CLI (`alembic upgrade head`): the URL comes from `-x url=...`, else
  `PBX_DATABASE_URL`, else `sqlalchemy.url` in alembic.ini; this module opens
  the engine and runs the migrations under `asyncio.run`;
- code (`pbx_controller.store.upgrade_to_head`): the caller passes a sync
  connection in `config.attributes["connection"]` from inside
  `AsyncConnection.run_sync`, so no second event loop is needed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection, event

from pbx_controller.store.db import make_engine, parse_database_url, redact_url
from pbx_controller.store.models import Base, ExactDecimal, UTCDateTime

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("PBX_DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise SystemExit("no database URL: pass -x url=... or set PBX_DATABASE_URL")
    return url


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Render the project's column types as plain SQLAlchemy types.

    A migration is a frozen snapshot: it must not import application code
    that may change after it was written.
    """
    if type_ != "type":
        return False
    if isinstance(obj, UTCDateTime):
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return (
            "sa.DateTime(timezone=True).with_variant("
            'postgresql.TIMESTAMP(timezone=True, precision=3), "postgresql")'
        )
    if isinstance(obj, ExactDecimal):
        args = "" if obj.precision is None else f"{obj.precision}, {obj.scale}"
        return f'sa.Numeric({args}).with_variant(sa.String(), "sqlite")'
    return False


def _configure_options(dialect_name: str) -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        "compare_type": True,
        "compare_server_default": True,
        # SQLite cannot ALTER constraints: autogenerate copy-and-move batches.
        "render_as_batch": dialect_name == "sqlite",
        "render_item": _render_item,
    }


def run_migrations_offline() -> None:
    """`alembic upgrade head --sql`: print the SQL for review instead of running it."""
    url = parse_database_url(_url())
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_configure_options(url.get_backend_name()),
    )
    with context.begin_transaction():
        context.run_migrations()


def _raw(driver_connection: Any, sql: str) -> list[Any]:
    cursor = driver_connection.cursor()
    try:
        cursor.execute(sql)
        return list(cursor.fetchall())
    finally:
        cursor.close()


@contextmanager
def _sqlite_atomic(connection: Connection) -> Iterator[None]:
    """Run SQLite migrations in one real transaction with foreign keys off.

    The sqlite3 driver does not BEGIN before DDL, so each statement would
    commit on its own and a failed migration would leave half a schema; here
    SQLAlchemy's begin emits BEGIN itself. Foreign keys must be off while
    batch mode copies and drops tables (the pragma is ignored inside a
    transaction, so it is set before); `foreign_key_check` runs before commit.
    """
    driver: Any = connection.connection.dbapi_connection
    foreign_keys = _raw(driver, "PRAGMA foreign_keys")[0][0]
    isolation_level = driver.isolation_level
    _raw(driver, "PRAGMA foreign_keys=OFF")
    driver.isolation_level = None

    def begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    event.listen(connection, "begin", begin)
    try:
        yield
    finally:
        event.remove(connection, "begin", begin)
        driver.isolation_level = isolation_level
        _raw(driver, f"PRAGMA foreign_keys={int(foreign_keys)}")


def do_run_migrations(connection: Connection) -> None:
    dialect_name = connection.dialect.name
    if dialect_name != "sqlite" or connection.in_transaction():
        # PostgreSQL has transactional DDL; a caller's transaction is the caller's.
        context.configure(connection=connection, **_configure_options(dialect_name))
        with context.begin_transaction():
            context.run_migrations()
        return
    with _sqlite_atomic(connection):
        context.configure(
            connection=connection, transactional_ddl=True, **_configure_options(dialect_name)
        )
        with context.begin_transaction():
            context.run_migrations()
            violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if violations:
                raise RuntimeError(f"migration left foreign key violations: {violations[:10]}")


async def run_async_migrations() -> None:
    url = _url()
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    except Exception as exc:
        # Errors from the driver may quote the URL; say which database, redacted.
        exc.add_note(f"database: {redact_url(url)}")
        raise
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        asyncio.run(run_async_migrations())
    else:
        do_run_migrations(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
