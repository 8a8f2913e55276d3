"""`pbxctl serve` runs the controller; `pbxctl db upgrade` migrates the database.

Start-up needs the database (migrations, then the tenants and DIDs): if it
does not answer, `serve` exits at once with one line and status 2, before
taking any call. Once running, every CDR goes through the durable outbox in
`settings.data_dir / "outbox"` in front of the database, so a database
outage no longer touches calls: CDRs wait on disk and drain, in order, when
the database is back. Start order: database, outbox (its backlog from an
earlier run starts draining), controller. On SIGTERM or SIGINT the
controller stops first (no new CDRs), then the outbox gets
`SHUTDOWN_FLUSH_S` to deliver; what is left stays on disk for the next start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from pbx_controller.cli.main import CliError
from pbx_controller.config import ConfigError, Settings, load_settings
from pbx_controller.logs import setup_logging

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from pbx_controller.core.model import Directory

E = TypeVar("E", bound=BaseException)

# The database must answer this fast at start-up (asyncpg would wait 60 s
# for a host that drops packets).
STARTUP_DB_TIMEOUT_S = 15.0
# What SIGTERM leaves the outbox to deliver before the process exits.
SHUTDOWN_FLUSH_S = 5.0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the controller until SIGTERM",
        description="Run pbx-controller: migrate the database, load tenants and DIDs, "
        "connect to Asterisk (ARI, AMI) and serve FastAGI until SIGTERM or SIGINT.",
    )
    serve.add_argument(
        "--no-migrate", action="store_true", help="do not apply pending migrations at start"
    )
    serve.set_defaults(func=run_serve)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = db_sub.add_parser("upgrade", help="apply every pending migration")
    upgrade.set_defaults(func=run_db_upgrade)


def settings_from(args: argparse.Namespace) -> Settings:
    try:
        return load_settings(args.config)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def run_serve(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    setup_logging(settings.log_level, settings.log_format)
    asyncio.run(_serve(settings, migrate=not args.no_migrate))
    return 0


async def _serve(settings: Settings, *, migrate: bool) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from pbx_controller.asterisk.ari import AriError
    from pbx_controller.recordings.pipeline import RecordingPipeline
    from pbx_controller.recordings.storage import RecordingStorage
    from pbx_controller.service import serve
    from pbx_controller.store.agent_log import DatabaseAgentLog, restorations
    from pbx_controller.store.cdr_writer import DatabaseCdrSink
    from pbx_controller.store.db import make_sessionmaker
    from pbx_controller.store.directory import load_directory
    from pbx_controller.store.liveness import LivenessStamp
    from pbx_controller.store.outbox import CdrOutbox, OutboxError

    url = settings.database.url.get_secret_value()
    engine, directory = await _open_database(url, migrate=migrate)
    sessions = make_sessionmaker(engine)
    try:
        outbox = CdrOutbox(
            settings.data_dir / "outbox",
            DatabaseCdrSink(sessions),
            database_url=url,
        )
        try:
            await outbox.open()
        except (OutboxError, OSError) as exc:
            raise CliError(f"CDR outbox: {exc}") from None
        # The outbox's lock is held: no other run of this data dir is stamping.
        stamp = LivenessStamp(settings.data_dir)
        try:
            restored = await restorations(
                sessions,
                directory.agents,
                datetime.now(UTC),
                timedelta(seconds=settings.agents_restore_within_s),
                alive_at=stamp.read(),
            )
        except SQLAlchemyError as exc:
            # Starting with everyone logged out would leave the log saying
            # otherwise (readiness billed for agents who get no calls).
            raise CliError(f"agent state log unreadable: {type(exc).__name__}: {exc}") from None
        agent_log = DatabaseAgentLog(sessions)
        agent_log.start()
        recordings = RecordingPipeline(
            RecordingStorage(settings.recordings_dir()),
            settings.recordings.spool_dir,
            sessions,
        )
        stamping = asyncio.create_task(stamp.run(), name="liveness-stamp")
        try:
            outbox.start()
            try:
                await serve(
                    settings,
                    directory,
                    outbox,
                    agent_log,
                    recordings,
                    restored,
                    load_directory=lambda: load_directory(sessions),
                )
            except AriError as exc:
                raise CliError(str(exc)) from None
            except OSError as exc:  # a listener's port is taken
                raise CliError(str(exc)) from None
            except BaseExceptionGroup as group:  # the controller's TaskGroup
                cause = _first(group, AriError) or _first(group, OSError)
                if cause is None:
                    raise
                raise CliError(str(cause)) from None
        finally:
            stamping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stamping
            await agent_log.close(flush_timeout_s=SHUTDOWN_FLUSH_S)
            await outbox.close(flush_timeout_s=SHUTDOWN_FLUSH_S)
    finally:
        await engine.dispose()


async def _open_database(url: str, *, migrate: bool) -> tuple[AsyncEngine, Directory]:
    """Migrate and load the directory, or raise CliError with one clean line."""
    from sqlalchemy.exc import SQLAlchemyError

    from pbx_controller.store.config_store import SchemaMissingError, StoredConfigError
    from pbx_controller.store.db import (
        DatabaseUrlError,
        make_engine,
        make_sessionmaker,
        redact_url,
        upgrade_to_head,
    )
    from pbx_controller.store.directory import load_directory
    from pbx_controller.store.outbox import describe_database_error

    try:
        engine = make_engine(url)
    except DatabaseUrlError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:  # SQLite: its directory cannot be created
        raise CliError(f"database {redact_url(url)}: {exc}") from None
    try:
        async with asyncio.timeout(STARTUP_DB_TIMEOUT_S):
            if migrate:
                await upgrade_to_head(url)
            directory = await load_directory(make_sessionmaker(engine))
    except TimeoutError:
        await _dispose_quietly(engine)
        raise CliError(
            f"database {redact_url(url)} did not answer within {STARTUP_DB_TIMEOUT_S:.0f}s"
        ) from None
    except (StoredConfigError, SchemaMissingError) as exc:
        # Configuration in the database that the controller cannot use.
        await _dispose_quietly(engine)
        raise CliError(f"database {redact_url(url)}: {exc}") from None
    except (OSError, SQLAlchemyError) as exc:
        await _dispose_quietly(engine)
        raise CliError(
            f"database {redact_url(url)} is unreachable: {describe_database_error(exc, url)}"
        ) from None
    except BaseException:
        await _dispose_quietly(engine)
        raise
    return engine, directory


def _first(group: BaseExceptionGroup[Any], kind: type[E]) -> E | None:
    """The first `kind` exception inside `group`, at any depth."""
    for exc in group.exceptions:
        if isinstance(exc, kind):
            return exc
        if isinstance(exc, BaseExceptionGroup) and (found := _first(exc, kind)) is not None:
            return found
    return None


async def _dispose_quietly(engine: AsyncEngine) -> None:
    with contextlib.suppress(Exception):
        await engine.dispose()


def run_db_upgrade(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    setup_logging(settings.log_level, settings.log_format)
    from pbx_controller.store.db import upgrade_to_head

    asyncio.run(upgrade_to_head(settings.database.url.get_secret_value()))
    return 0
