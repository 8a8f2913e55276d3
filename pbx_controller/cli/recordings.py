"""`pbxctl recordings`: find, fetch and purge call recordings.

    pbxctl recordings list --tenant acme [--date 2026-03-30 | --from D --to D] [--format table|json]
    pbxctl recordings show --tenant acme CALL_ID [--format text|json]
    pbxctl recordings export --tenant acme CALL_ID --out FILE [--audio wav|mp3|opus] [--force]
    pbxctl recordings purge [--dry-run] [--tenant acme]

Every look-up is scoped to one tenant (`--tenant` is required): a call id of
another tenant is reported exactly like a call id that does not exist.
Days are UTC days, like the file layout (`<tenant>/<yyyy>/<mm>/`, UTC) and
`pbxctl cdr reconcile`. `export` copies the stored file (0640, atomically)
and checks its sha256 against the one recorded when it was written.

`purge` is the cron job: it deletes every file past its tenant's retention
or flagged for erasure, marks its row deleted, and logs each removal (tenant,
call id, reason, path). Safe to run from cron: a second run at the same time
waits for nothing and exits 0, a run that dies half-way is finished by the
next one.

    17 3 * * * pbxctl recordings purge

Exit status: 0 done; 1 nothing found (show, export), a deleted or corrupt
recording (export), or files that could not be removed (purge); 2 bad input,
bad settings or the database unreachable.

The recordings live under `recordings.dir` (default `data_dir/recordings`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pbx_controller.cli.main import CliError
from pbx_controller.cli.serve import settings_from
from pbx_controller.logs import setup_logging

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from pbx_controller.recordings.storage import RecordingStorage
    from pbx_controller.store.recordings import RecordingInfo

__all__ = ["SUBCOMMANDS", "register"]

log = logging.getLogger(__name__)

T = TypeVar("T")
LOOKUP_TIMEOUT_S = 30.0
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CHUNK = 1 << 20
NOT_FOUND = 1


# -- arguments -------------------------------------------------------------------------


def _day(text: str, flag: str) -> dt.date:
    if not _DAY_RE.match(text):
        raise CliError(f"{flag}: {text!r} is not YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise CliError(f"{flag}: {exc}") from None


def _utc_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def _window(args: argparse.Namespace) -> tuple[dt.datetime | None, dt.datetime | None]:
    """[since, until) from --date, or --from/--to (both inclusive days)."""
    if args.date is not None:
        day = _day(args.date, "--date")
        return _utc_midnight(day), _utc_midnight(day + dt.timedelta(days=1))
    since = _utc_midnight(_day(args.from_, "--from")) if args.from_ else None
    until = _utc_midnight(_day(args.to, "--to") + dt.timedelta(days=1)) if args.to else None
    if since is not None and until is not None and since >= until:
        raise CliError("--from is after --to")
    return since, until


def _call_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise CliError(f"CALL_ID: {text!r} is not a call id (a UUID)") from None


def _not_found(message: str) -> int:
    print(f"pbxctl: {message}", file=sys.stderr)
    return NOT_FOUND


# -- the database ------------------------------------------------------------------------


def _run(
    args: argparse.Namespace,
    work: Callable[[async_sessionmaker[AsyncSession], RecordingStorage], Awaitable[T]],
    *,
    timeout: float | None = LOOKUP_TIMEOUT_S,
    log_level: str | None = None,
) -> T:
    """Run `work(sessions, storage)` on the configured database; database
    failures become one-line CLI errors (exit 2)."""
    from sqlalchemy.exc import SQLAlchemyError

    from pbx_controller.cli.billing import database_error
    from pbx_controller.recordings.storage import RecordingStorage
    from pbx_controller.store.db import DatabaseUrlError, make_engine, make_sessionmaker, redact_url

    settings = settings_from(args)
    # Look-ups print their answer and log only problems; purge logs each removal.
    level = log_level or "WARNING"
    setup_logging(
        level if settings.log_level == "INFO" else settings.log_level, settings.log_format
    )
    url = settings.database.url.get_secret_value()
    storage = RecordingStorage(settings.recordings_dir())

    async def main() -> T:
        try:
            engine = make_engine(url)
        except DatabaseUrlError as exc:
            raise CliError(f"database: {exc}") from None
        try:
            async with asyncio.timeout(timeout):
                return await work(make_sessionmaker(engine), storage)
        except TimeoutError:
            raise CliError(f"database {redact_url(url)} did not answer within {timeout}s") from None
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except (SQLAlchemyError, OSError) as exc:
        # OSError: asyncpg's connection refused / unreachable host.
        raise CliError(database_error(exc, url)) from None


async def _require_tenant(sessions: async_sessionmaker[AsyncSession], tenant: str) -> None:
    from pbx_controller.store.recordings import tenant_exists

    if not await tenant_exists(sessions, tenant):
        raise CliError(f"--tenant: no tenant {tenant!r}")


# -- list ------------------------------------------------------------------------------------


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds")


def _as_json(info: RecordingInfo) -> dict[str, Any]:
    return {
        "call_id": str(info.call_id),
        "recording_id": str(info.id),
        "tenant": info.tenant_id,
        "format": info.format,
        "path": info.path,
        "duration_ms": info.duration_ms,
        "sha256": info.sha256,
        "started_at": _iso(info.created_at),
        "retention_until": _iso(info.retention_until),
        "status": info.status,
        "erase_requested_at": _iso(info.erase_requested_at),
        "deleted_at": _iso(info.deleted_at),
        "consent": {
            "policy": info.consent_policy,
            "prompt_version": info.consent_prompt_version,
            "digit": info.consent_digit,
            "digit_at": _iso(info.consent_digit_at),
            "channel": info.consent_channel,
        },
        "cdr": None
        if info.cdr_consent is None
        else {
            "consent": info.cdr_consent,
            "recording_id": None if info.cdr_recording_id is None else str(info.cdr_recording_id),
        },
    }


def _duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    minutes, seconds = divmod(ms / 1000, 60)
    return f"{int(minutes)}:{seconds:04.1f}"


def _table(rows: list[RecordingInfo]) -> str:
    header = ("call id", "started (UTC)", "format", "duration", "status", "retain until", "path")
    lines = [header] + [
        (
            str(r.call_id),
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            r.format,
            _duration(r.duration_ms),
            r.status,
            r.retention_until.strftime("%Y-%m-%d"),
            r.path,
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    text.append(f"{len(rows)} recording file{'' if len(rows) == 1 else 's'}")
    return "\n".join(text)


def run_list(args: argparse.Namespace) -> int:
    since, until = _window(args)

    async def work(
        sessions: async_sessionmaker[AsyncSession], _storage: RecordingStorage
    ) -> list[RecordingInfo]:
        from pbx_controller.store.recordings import list_recordings

        await _require_tenant(sessions, args.tenant)
        return await list_recordings(
            sessions, args.tenant, since=since, until=until, include_deleted=args.include_deleted
        )

    rows = _run(args, work)
    if args.format == "json":
        print(json.dumps([_as_json(r) for r in rows], indent=2))
    else:
        print(_table(rows))
    return 0


# -- show -------------------------------------------------------------------------------------


def _lookup(args: argparse.Namespace) -> list[RecordingInfo]:
    call_id = _call_id(args.call_id)

    async def work(
        sessions: async_sessionmaker[AsyncSession], _storage: RecordingStorage
    ) -> list[RecordingInfo]:
        from pbx_controller.store.recordings import recordings_of_call

        await _require_tenant(sessions, args.tenant)
        return await recordings_of_call(sessions, args.tenant, call_id)

    return _run(args, work)


def run_show(args: argparse.Namespace) -> int:
    rows = _lookup(args)
    if not rows:
        return _not_found(f"no recording of call {args.call_id} in tenant {args.tenant}")
    if args.format == "json":
        print(json.dumps([_as_json(r) for r in rows], indent=2))
        return 0
    for number, row in enumerate(rows):
        if number:
            print()
        data = _as_json(row)
        consent, cdr = data.pop("consent"), data.pop("cdr")
        for key, value in data.items():
            print(f"{key + ':':20} {'-' if value is None else value}")
        for key, value in consent.items():
            print(f"{'consent ' + key + ':':20} {'-' if value is None else value}")
        linked = cdr is not None and cdr["recording_id"] is not None
        cdr_text = "not written yet" if cdr is None else f"consent {cdr['consent']}"
        print(f"{'cdr:':20} {cdr_text}{', linked' if linked else ''}")
    return 0


# -- export ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _temp_beside(out: Path) -> Iterator[tuple[int, Path]]:
    fd, name = tempfile.mkstemp(prefix=".tmp-", dir=out.parent)
    temp = Path(name)
    try:
        yield fd, temp
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def _copy_checked(source: Path, out: Path, sha256: str, *, force: bool) -> str | None:
    """Copy `source` to `out` atomically (0640); None, or why it failed."""
    digest = hashlib.sha256()
    with _temp_beside(out) as (fd, temp), open(source, "rb") as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            _write_all(fd, chunk)
        if digest.hexdigest() != sha256:
            return f"checksum mismatch: {source} has sha256 {digest.hexdigest()}, expected {sha256}"
        os.fchmod(fd, 0o640)
        os.fsync(fd)
        if force:
            os.replace(temp, out)
        else:
            try:
                os.link(temp, out)  # fails if `out` appeared meanwhile: never overwrite
            except FileExistsError:
                raise CliError(f"--out: {out} exists (use --force to replace it)") from None
    return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def run_export(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not args.force:
        raise CliError(f"--out: {out} exists (use --force to replace it)")
    if not out.parent.is_dir():
        raise CliError(f"--out: directory {out.parent} does not exist")
    rows = _lookup(args)
    row = next((r for r in rows if r.format == args.audio), None)
    if row is None:
        formats = ", ".join(r.format for r in rows)
        return _not_found(
            f"no {args.audio} recording of call {args.call_id} in tenant {args.tenant}"
            + (f" (there is: {formats})" if formats else "")
        )
    if row.deleted_at is not None:
        return _not_found(
            f"the recording of call {args.call_id} was deleted at {_iso(row.deleted_at)}"
        )
    if row.erase_requested_at is not None:
        return _not_found(
            f"the recording of call {args.call_id} is to be erased"
            f" (requested {_iso(row.erase_requested_at)}): not exported"
        )
    if row.sha256 is None:
        return _not_found(f"the recording of call {args.call_id} is not finished yet")
    from pbx_controller.recordings.storage import RecordingStorage, UnsafePath

    storage = RecordingStorage(settings_from(args).recordings_dir())
    try:
        source = storage.resolve(row.path).absolute
    except UnsafePath as exc:
        return _not_found(f"refusing the stored path: {exc}")
    try:
        problem = _copy_checked(source, out, row.sha256, force=args.force)
    except FileNotFoundError:
        return _not_found(f"the file of call {args.call_id} is missing: {source}")
    except PermissionError as exc:
        raise CliError(f"cannot read or write: {exc}") from None
    if problem is not None:
        return _not_found(problem)
    print(f"{out}: {row.format}, {_duration(row.duration_ms)}, sha256 {row.sha256}")
    return 0


# -- purge ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _purge_lock(base: Path) -> Iterator[bool]:
    """An exclusive lock beside the recordings: False when another purge
    holds it (cron overlapping a slow run)."""
    from pbx_controller.recordings.storage import DIR_MODE

    if not base.exists():
        base.mkdir(parents=True, mode=DIR_MODE)
        os.chmod(base, DIR_MODE)
    fd = os.open(base / ".purge.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def run_purge(args: argparse.Namespace) -> int:
    from pbx_controller.store.models import utcnow
    from pbx_controller.store.recordings import PurgeReport, purge

    base = settings_from(args).recordings_dir()
    with _purge_lock(base) as locked:
        if not locked:
            print("pbxctl: another `recordings purge` is running; nothing done", file=sys.stderr)
            return 0

        async def work(
            sessions: async_sessionmaker[AsyncSession], storage: RecordingStorage
        ) -> PurgeReport:
            if args.tenant is not None:
                await _require_tenant(sessions, args.tenant)
            return await purge(
                sessions, storage, now=utcnow(), dry_run=args.dry_run, tenant_id=args.tenant
            )

        # No overall timeout: each database step has its own (the store's).
        report = _run(args, work, timeout=None, log_level="INFO")
    if args.dry_run:
        print(f"would purge {len(report.items)} recording file(s)")
        return 0
    missing = sum(1 for item in report.purged if item.file_removed is False)
    print(
        f"purged {len(report.purged)} recording file(s)"
        f" ({missing} already missing), {len(report.failed)} failed"
    )
    return 1 if report.failed else 0


# -- parsers ------------------------------------------------------------------------------------


def _tenant(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument(
        "--tenant", required=required, metavar="T", help="the tenant whose recordings to see"
    )


def _add_list(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "list",
        help="one tenant's recordings, by UTC day",
        description="List one tenant's recording files (one line per file), oldest first.",
    )
    _tenant(parser)
    parser.add_argument("--date", metavar="YYYY-MM-DD", help="recordings started on this UTC day")
    parser.add_argument("--from", dest="from_", metavar="YYYY-MM-DD", help="from this UTC day")
    parser.add_argument("--to", metavar="YYYY-MM-DD", help="up to this UTC day, inclusive")
    parser.add_argument("--include-deleted", action="store_true", help="also purged recordings")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.set_defaults(func=_list_checked)


def _list_checked(args: argparse.Namespace) -> int:
    if args.date is not None and (args.from_ or args.to):
        raise CliError("--date cannot be combined with --from or --to")
    return run_list(args)


def _add_show(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "show",
        help="one call's recording: files, checksums, consent evidence",
        description="Show the recording of one call of the tenant (exit 1 if it has none).",
    )
    _tenant(parser)
    parser.add_argument("call_id", metavar="CALL_ID")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(func=run_show)


def _add_export(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "export",
        help="copy one call's recording to a file, checking its sha256",
        description=(
            "Copy the stored recording of one call of the tenant to FILE (mode 0640,"
            " written atomically) and check it against the sha256 recorded when it was"
            " stored. Exit 1 if there is none, it was deleted or is to be erased, or"
            " the stored file does not match its checksum."
        ),
    )
    _tenant(parser)
    parser.add_argument("call_id", metavar="CALL_ID")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE")
    parser.add_argument(
        "--audio", choices=("wav", "mp3", "opus"), default="wav", help="which file (default wav)"
    )
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")
    parser.set_defaults(func=run_export)


def _add_purge(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "purge",
        help="delete recordings past retention or flagged for erasure (cron)",
        description=(
            "Delete every recording file past its tenant's retention or flagged for"
            " erasure, then mark its row deleted; each removal is logged. Safe to run"
            " from cron (overlapping runs: the second does nothing). Exit 1 if a file"
            " could not be removed."
        ),
    )
    parser.add_argument("--dry-run", action="store_true", help="only log what would go")
    _tenant(parser, required=False)
    parser.set_defaults(func=run_purge)


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction[Any]], None], ...] = (
    _add_list,
    _add_show,
    _add_export,
    _add_purge,
)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "recordings", help="call recordings: list, show, export, purge (one tenant at a time)"
    )
    commands = parser.add_subparsers(dest="recordings_command", required=True, metavar="SUBCOMMAND")
    for add in SUBCOMMANDS:
        add(commands)
