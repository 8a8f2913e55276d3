"""`make demo`: the main job on embedded defaults.

Starts the sandbox Asterisk 22, an SQLite database (migrated, with two
tenants), and the controller; places real SIP calls from sipp through the
PJSIP trunk; prints what the controller decided for each call and the CDR
rows it wrote to the database.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
from pathlib import Path

from sqlalchemy import select

from pbx_controller.core import actions as a
from pbx_controller.core import events as e
from pbx_controller.sandbox import sipp
from pbx_controller.sandbox.asterisk import (
    AsteriskInstall,
    AsteriskUnavailable,
    SandboxAsterisk,
    controller_settings,
    find_asterisk,
)
from pbx_controller.service import Controller
from pbx_controller.store import models as m
from pbx_controller.store.cdr_writer import DatabaseCdrSink
from pbx_controller.store.db import make_engine, make_sessionmaker, upgrade_to_head
from pbx_controller.store.directory import load_directory

OUT = Path("demo-out")
TENANTS = [
    # id, name, greeting, DID
    ("acme", "Acme Insurance", "sound:hello-world", "48221001"),
    ("smallco", "SmallCo (virtual secretary)", "sound:beep", "48221002"),
]
CALLS = [
    ("48221001", 2, "two callers for Acme"),
    ("48221002", 1, "one caller for SmallCo"),
    ("48229999", 1, "a caller who dialled a number nobody owns"),
]


class Narrator:
    """Prints each decision of the controller, tagged with the call it is for."""

    def __init__(self) -> None:
        self.calls: dict[str, str] = {}

    def __call__(self, event: e.Event, actions: list[a.Action]) -> None:
        channel_id = getattr(event, "channel_id", "")
        if isinstance(event, e.CallArrived):
            self.calls[channel_id] = f"call {len(self.calls) + 1}"
        tag = self.calls.get(channel_id, "")
        said = ", ".join(type(x).__name__ + _detail(x) for x in actions) or "-"
        print(f"  {tag:<7} {type(event).__name__ + _detail(event):<44} -> {said}")


def _detail(item: object) -> str:
    match item:
        case e.CallArrived(did=did, caller_number=caller):
            return f"(DID {did}, from {caller})"
        case a.Play(media=media):
            return f"({', '.join(media)})"
        case a.ContinueInDialplan(context=context):
            return f"({context})"
        case a.EmitCdr(cdr=cdr):
            return f"({cdr.disposition.value})"
        case e.PlaybackFinished(completed=completed):
            return "" if completed else "(cut short)"
    return ""


async def main(install: AsteriskInstall) -> int:
    url = f"sqlite+aiosqlite:///{OUT / 'pbx.db'}"
    print(f"== database: {url} (migrating)")
    await upgrade_to_head(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    async with sessions() as session, session.begin():
        for tenant_id, name, greeting, did in TENANTS:
            session.add(m.Tenant(id=tenant_id, name=name, greeting_sound=greeting))
            await session.flush()
            session.add(m.Did(number=did, tenant_id=tenant_id))
    for tenant_id, name, greeting, did in TENANTS:
        print(f"   tenant {tenant_id:<8} {name:<30} DID {did}  greeting {greeting}")

    asterisk = SandboxAsterisk(install)
    print(f"== Asterisk: {' '.join(install.command())} (run dir {asterisk.host_dir})")
    await asyncio.to_thread(asterisk.start)
    try:
        print(
            f"   ARI {asterisk.endpoints.ari_url}, SIP udp 127.0.0.1:{asterisk.endpoints.sip_port}"
        )
        directory = await load_directory(sessions)
        controller = Controller(controller_settings(asterisk), directory, DatabaseCdrSink(sessions))
        controller.observers.append(Narrator())
        async with controller:
            print("== controller connected; placing real SIP calls with sipp")
            for did, count, what in CALLS:
                print(f"-- {what}: {count} x DID {did}")
                result = await sipp.call(asterisk.endpoints.sip_port, did, calls=count, rate=10)
                print(f"   sipp: {result.successful} completed, {result.failed} failed")
            await controller.executor.drain()
    finally:
        await asyncio.to_thread(asterisk.cleanup)

    print("== CDR rows in the database")
    async with sessions() as session:
        rows = (await session.scalars(select(m.Cdr).order_by(m.Cdr.arrived_at))).all()
    print(
        f"   {'call id':<36}  {'tenant':<8} {'DID':<9} {'caller':<8} {'disposition':<12} "
        "arrival->end ms"
    )
    for row in rows:
        ms = int((row.ended_at - row.arrived_at).total_seconds() * 1000)
        print(
            f"   {row.call_id!s:<36}  {row.tenant_id or '-':<8} {row.did:<9} {row.caller:<8} "
            f"{row.disposition:<12} {ms}"
        )
    await engine.dispose()
    expected = sum(count for _, count, _ in CALLS)
    if len(rows) != expected:
        print(f"demo: expected {expected} CDRs, found {len(rows)}", file=sys.stderr)
        return 1
    print(f"== done: {len(rows)} calls, {len(rows)} CDRs")
    return 0


def run() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        install = find_asterisk()
    except AsteriskUnavailable as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    return asyncio.run(main(install))


if __name__ == "__main__":
    sys.exit(run())
