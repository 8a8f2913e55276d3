"""`pbxctl serve` runs the controller; `pbxctl db upgrade` migrates the database."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from pbx_controller.cli.main import CliError
from pbx_controller.config import ConfigError, Settings, load_settings
from pbx_controller.logs import setup_logging


def register(sub: argparse._SubParsersAction[Any]) -> None:
    serve = sub.add_parser("serve", help="run the controller until SIGTERM")
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
    from pbx_controller.service import serve
    from pbx_controller.store.cdr_writer import DatabaseCdrSink
    from pbx_controller.store.db import make_engine, make_sessionmaker, upgrade_to_head
    from pbx_controller.store.directory import load_directory

    url = settings.database.url.get_secret_value()
    if migrate:
        await upgrade_to_head(url)
    engine = make_engine(url)
    try:
        sessions = make_sessionmaker(engine)
        directory = await load_directory(sessions)
        await serve(settings, directory, DatabaseCdrSink(sessions))
    finally:
        await engine.dispose()


def run_db_upgrade(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    setup_logging(settings.log_level, settings.log_format)
    from pbx_controller.store.db import upgrade_to_head

    asyncio.run(upgrade_to_head(settings.database.url.get_secret_value()))
    return 0
