"""`pbxctl config`: tenants, DIDs, queues, agents and skills from one file.

    pbxctl config apply pbx.toml [--dry-run]
    pbxctl config reload
    pbxctl config show > pbx.toml
    pbxctl config phones --passwords PASSWORDS.toml [--out pjsip_agents.conf]

`apply` validates the file before touching the database, prints one line
per change ("+ queue acme-sales", "~ agent anna: skills.polish 7 -> 8",
"- did 48220000") and writes them in one transaction; applying the same
file again prints "no changes". `--dry-run` prints the plan and writes
nothing. `show` prints the stored configuration as a file `apply` accepts,
so `apply` of `show` changes nothing.

`phones` writes the agents' PJSIP phones (endpoint, AOR to register to,
digest auth) for Asterisk's pjsip.conf to include, from the stored agents
and a passwords file of their own (`agent_id = "password"`, mode 600); the
file holds password digests only. Asterisk takes it on
`module reload res_pjsip.so`.

`reload` makes the running controller read the configuration again and
apply it live (as `kill -HUP` does): calls in progress go on, agents stay
as they are. It is refused, with the reason and nothing changed, while it
would drop a queue a live call is in or a logged-in agent.

Exit status: 0 done, 1 a reload refused, 2 an invalid file (one line per
problem, each naming its key), the database unreachable or unmigrated, or
the controller not running (reload).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pbx_controller.cli.main import CliError
from pbx_controller.cli.serve import settings_from
from pbx_controller.configfile import ConfigFileError, Problem, load, render
from pbx_controller.logs import setup_logging

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from pbx_controller.config import Settings

__all__ = [
    "DB_TIMEOUT_S",
    "on_database",
    "register",
    "run_apply",
    "run_phones",
    "run_reload",
    "run_show",
]

R = TypeVar("R")

# The whole read-diff-write must finish in this time (asyncpg would wait
# 60 s for a host that drops packets).
DB_TIMEOUT_S = 30.0


def _report(source: Path, problems: tuple[Problem, ...]) -> int:
    for problem in problems:
        print(f"pbxctl: error: {source}: {problem}", file=sys.stderr)
    return 2


def run_apply(args: argparse.Namespace) -> int:
    from pbx_controller.store.config_store import apply_config

    try:
        desired = load(args.file)  # a bad file fails before the database is asked
    except ConfigFileError as exc:
        return _report(args.file, exc.problems)
    settings = settings_from(args)
    try:
        changes = asyncio.run(
            on_database(settings, lambda s: apply_config(s, desired, dry_run=args.dry_run))
        )
    except ConfigFileError as exc:  # conflicts only the database reveals
        return _report(args.file, exc.problems)
    for change in changes:
        print(change)
    count = f"{len(changes)} change{'' if len(changes) == 1 else 's'}"
    if not changes:
        print("no changes")
    elif args.dry_run:
        print(f"{count} (dry run: nothing written)")
    else:
        print(f"{count} applied")
    return 0


def run_reload(args: argparse.Namespace) -> int:
    from pbx_controller.cli.agent import post_command

    answer = post_command(args, "/config/reload", {}, ("REFUSED",))
    if answer is None:
        return 1
    counts = ", ".join(f"{answer.get(k)} {k}" for k in ("tenants", "dids", "queues", "agents"))
    print(f"configuration reloaded: {counts}")
    return 0


def run_phones(args: argparse.Namespace) -> int:
    from pbx_controller.asterisk.phones import PhonePasswordsError, read_passwords, render_phones
    from pbx_controller.store.directory import load_directory

    try:
        passwords = read_passwords(args.passwords)
    except PhonePasswordsError as exc:
        raise CliError(str(exc)) from None
    settings = settings_from(args)
    directory = asyncio.run(on_database(settings, load_directory))
    try:
        text = render_phones(directory.agents, passwords)
    except PhonePasswordsError as exc:
        raise CliError(f"{args.passwords}: {exc}") from None
    if args.out is None:
        sys.stdout.write(text)
        return 0
    _write_private(args.out, text)
    print(f"{args.out}: {len(passwords)} phone(s); Asterisk: module reload res_pjsip.so")
    return 0


def _write_private(path: Path, text: str) -> None:
    """Replace `path` whole (a reader never sees half a file), mode 640."""
    from pbx_controller.cli.recordings import _temp_beside, _write_all

    try:
        with _temp_beside(path) as (fd, temp):
            _write_all(fd, text.encode())
            os.fchmod(fd, 0o640)
            os.fsync(fd)
            os.replace(temp, path)
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}") from None


def run_show(args: argparse.Namespace) -> int:
    from pbx_controller.store.config_store import load_config

    settings = settings_from(args)
    config = asyncio.run(on_database(settings, load_config))
    sys.stdout.write(render(config))
    return 0


async def on_database(
    settings: Settings, work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[R]]
) -> R:
    """Run `work` on the configured database; its failures become one CliError line."""
    from sqlalchemy.exc import SQLAlchemyError

    from pbx_controller.store.config_store import SchemaMissingError, StoredConfigError
    from pbx_controller.store.db import (
        DatabaseUrlError,
        make_engine,
        make_sessionmaker,
        redact_url,
    )
    from pbx_controller.store.outbox import describe_database_error

    # The engine's INFO line would mix with the change list on the terminal.
    setup_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    url = settings.database.url.get_secret_value()
    where = f"database {redact_url(url)}"
    try:
        engine = make_engine(url)
    except DatabaseUrlError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:  # SQLite: its directory cannot be created
        raise CliError(f"{where}: {exc}") from None
    try:
        async with asyncio.timeout(DB_TIMEOUT_S):
            return await work(make_sessionmaker(engine))
    except TimeoutError:
        raise CliError(f"{where} did not answer within {DB_TIMEOUT_S:.0f}s") from None
    except (SchemaMissingError, StoredConfigError) as exc:
        raise CliError(f"{where}: {exc}") from None
    except (OSError, SQLAlchemyError) as exc:
        raise CliError(f"{where} is unreachable: {describe_database_error(exc, url)}") from None
    finally:
        await engine.dispose()


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    config = subparsers.add_parser(
        "config",
        help="tenants, DIDs, queues, agents and skills from one pbx.toml",
        description="Declarative configuration: apply a pbx.toml to the database, "
        "or print what the database holds.",
    )
    actions = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    apply = actions.add_parser(
        "apply",
        help="make the database match FILE, printing each change",
        description="Validate FILE, print what differs from the database "
        "(+ created, ~ changed, - removed or deactivated) and write it in one transaction. "
        "A running controller picks the change up on `pbxctl config reload` (or a restart).",
    )
    apply.add_argument("file", type=Path, metavar="FILE", help="the pbx.toml to apply")
    apply.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
    apply.set_defaults(func=run_apply)
    reload = actions.add_parser(
        "reload",
        help="make the running controller apply the stored configuration live",
        description="Ask the running controller (its HTTP API) to read the configuration "
        "again and apply it without dropping a call or logging an agent out. Refused, "
        "with the reason, while it would drop a queue a live call is in or a logged-in agent.",
    )
    reload.set_defaults(func=run_reload)
    show = actions.add_parser(
        "show",
        help="print the stored configuration as pbx.toml",
        description="Print tenants, DIDs, queues and agents as a pbx.toml that "
        "`config apply` accepts unchanged.",
    )
    show.set_defaults(func=run_show)
    phones = actions.add_parser(
        "phones",
        help="write the agents' PJSIP phones (pjsip_agents.conf)",
        description="Write a PJSIP endpoint, AOR and digest auth for each stored agent "
        "whose endpoint is PJSIP/<name>, with the passwords of PASSWORDS "
        '(TOML, agent_id = "password", mode 600). The output holds password '
        "digests only. Asterisk takes it on `module reload res_pjsip.so`.",
    )
    phones.add_argument(
        "--passwords", type=Path, required=True, metavar="PASSWORDS", help="agent id -> password"
    )
    phones.add_argument(
        "--out", type=Path, metavar="PATH", help="write here (mode 640) instead of stdout"
    )
    phones.set_defaults(func=run_phones)
