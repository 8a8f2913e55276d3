"""`make demo`: the main job on embedded defaults.

Starts the sandbox Asterisk 22 and an SQLite database, applies
examples/demo.toml (two client firms, a queue each, three agents), starts
the controller, lets the agents log in from their phones (sipp, feature code
*21), and places real SIP calls through the PJSIP trunk. It prints what the
controller decided for each call, then the CDRs and agent state rows it
wrote to the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sys
from pathlib import Path

from sqlalchemy import select

from pbx_controller import configfile
from pbx_controller.core import actions as a
from pbx_controller.core import events as e
from pbx_controller.recordings.pipeline import RecordingPipeline
from pbx_controller.recordings.storage import RecordingStorage
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
from pbx_controller.store.agent_log import DatabaseAgentLog
from pbx_controller.store.cdr_writer import DatabaseCdrSink
from pbx_controller.store.config_store import apply_config
from pbx_controller.store.db import make_engine, make_sessionmaker, upgrade_to_head
from pbx_controller.store.directory import load_directory

OUT = Path("demo-out")
CONFIG = Path(__file__).resolve().parents[1] / "examples" / "demo.toml"
# Agent phones: how long each rings before the agent picks up, and talks.
# Each phone and caller "talks": a steady tone as RTP (agents 1200 Hz,
# callers 440 Hz), so a recording's two channels can be told apart.
PHONES = {
    "anna": sipp.AgentPhone(ring_ms=400, talk_ms=3000, tone_hz=1200),
    "bartek": sipp.AgentPhone(ring_ms=900, talk_ms=1500, tone_hz=1200),
    "celina": sipp.AgentPhone(ring_ms=600, talk_ms=1500, tone_hz=1200),
}
CALLS = [
    (
        "48221001",
        2,
        "two callers for Acme's sales queue (needs Polish level 5; consent policy notify: "
        "staying on the line after the announcement is consent, but only Anna's "
        "employment terms allow recording)",
    ),
    (
        "48221002",
        1,
        "one caller for SmallCo's front desk (rings all agents; consent policy opt_in: "
        "the caller presses nothing, so the call is not recorded)",
    ),
    ("48229999", 1, "a caller who dialled a number nobody owns"),
]


class Narrator:
    """Prints each decision of the controller, tagged with the call it is for."""

    def __init__(self) -> None:
        self.calls: dict[str, str] = {}
        self.count = 0

    def __call__(self, event: e.Event, actions: list[a.Action]) -> None:
        if isinstance(event, e.CallArrived):
            self.count += 1
            self.calls[event.call_id] = self.calls[event.channel_id] = f"call {self.count}"
        tag = self._tag(event)
        said = ", ".join(type(x).__name__ + _detail(x) for x in actions if _shown(x)) or "-"
        print(f"  {tag:<8} {type(event).__name__ + _detail(event):<46} -> {said}")

    def _tag(self, event: e.Event) -> str:
        name = getattr(event, "name", "")
        for key in (getattr(event, "call_id", ""), getattr(event, "channel_id", ""), name[:36]):
            if key in self.calls:
                return self.calls[key]
            call = key.split("-leg")[0].split("-pb")[0]
            if call in self.calls:
                return self.calls[call]
        if isinstance(event, e.TimerFired):
            return self.calls.get(event.timer_id.split("/")[0], "")
        if isinstance(event, e.AgentCommand):
            return event.agent_id
        return ""


def _shown(action: a.Action) -> bool:
    # Timers and hold music are noise at this level of detail.
    return not isinstance(action, a.StartTimer | a.CancelTimer | a.StopMoh)


def _detail(item: object) -> str:
    match item:
        case e.CallArrived(did=did, caller_number=caller):
            return f"(DID {did}, from {caller})"
        case e.AgentCommand(agent_id=agent, command=command):
            return f"({agent} {command})"
        case e.AgentLegAnswered(agent_id=agent):
            return f"({agent})"
        case a.Play(media=media):
            return f"({', '.join(media)})"
        case a.Originate(endpoint=endpoint):
            return f"({endpoint})"
        case a.ContinueInDialplan(context=context):
            return f"({context})"
        case a.RecordAgentState(record=r):
            return f"({r.agent_id} {r.state.value})"
        case a.EmitCdr(cdr=cdr):
            return f"({cdr.disposition.value}, consent {cdr.consent})"
        case (
            a.RecordLeg(name=name) | e.RecordingStarted(name=name) | e.RecordingFinished(name=name)
        ):
            return f"({name.rsplit('-', 1)[-1]})"
        case e.DtmfReceived(digit=digit):
            return f"({digit})"
        case e.PlaybackFinished(completed=completed):
            return "" if completed else "(cut short)"
    return ""


async def main(install: AsteriskInstall) -> int:
    url = f"sqlite+aiosqlite:///{OUT / 'pbx.db'}"
    print(f"== database: {url} (migrating)")
    await upgrade_to_head(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    print(f"== pbxctl config apply {CONFIG.relative_to(CONFIG.parents[1])}")
    for change in await apply_config(sessions, configfile.load(CONFIG)):
        print(f"   {change}")

    asterisk = SandboxAsterisk(install)
    print(f"== Asterisk: {' '.join(install.command())} (run dir {asterisk.host_dir})")
    await asyncio.to_thread(asterisk.start)
    agent_log = DatabaseAgentLog(sessions)
    agent_log.start()
    try:
        port = asterisk.endpoints.sip_port
        print(f"   ARI {asterisk.endpoints.ari_url}, SIP udp 127.0.0.1:{port}")
        async with contextlib.AsyncExitStack() as stack:
            for phone in PHONES.values():
                await stack.enter_async_context(phone)
            await asyncio.to_thread(
                asterisk.set_agent_phones,
                {f"agent-{name}": phone.address for name, phone in PHONES.items()},
            )
            directory = await load_directory(sessions)
            recordings = RecordingPipeline(
                RecordingStorage(OUT / "recordings"), asterisk.recording_dir, sessions
            )
            controller = Controller(
                controller_settings(asterisk),
                directory,
                DatabaseCdrSink(sessions),
                agent_log=agent_log,
                recordings=recordings,
            )
            controller.observers.append(Narrator())
            await stack.enter_async_context(controller)
            print("== agents log in from their phones (feature code *21)")
            for name in PHONES:
                await sipp.call(port, "*21", from_user=f"agent-{name}")
            print("== real SIP calls from sipp")
            for did, count, what in CALLS:
                print(f"-- {what}: {count} x DID {did}")
                result = await sipp.call(port, did, calls=count, rate=5, tone_hz=440)
                print(f"   sipp: {result.successful} completed, {result.failed} failed")
            await controller.executor.drain()
    finally:
        await asyncio.to_thread(asterisk.cleanup)
        await agent_log.close()

    async with sessions() as session:
        rows = (await session.scalars(select(m.Cdr).order_by(m.Cdr.arrived_at))).all()
        offers: dict[str, list[str]] = {}
        for seg in await session.scalars(select(m.CdrSegment).order_by(m.CdrSegment.seq)):
            offers.setdefault(str(seg.call_id), []).append(f"{seg.agent_id}:{seg.outcome}")
        log_rows = (await session.scalars(select(m.AgentStateLog))).all()
        recording_rows = (
            await session.scalars(select(m.Recording).order_by(m.Recording.created_at))
        ).all()
    await engine.dispose()
    print("== CDR rows in the database (ms)")
    print(
        f"   {'call id':<8} {'tenant':<8} {'DID':<9} {'disposition':<12} "
        f"{'queue':<14} {'agent':<7} {'wait':>6} {'talk':>6} {'consent':<10} "
        f"{'recorded':<8} offers"
    )
    for row in rows:
        print(
            f"   {str(row.call_id)[:8]:<8} {row.tenant_id or '-':<8} {row.did:<9} "
            f"{row.disposition:<12} {row.queue_id or '-':<14} {row.agent_id or '-':<7} "
            f"{row.wait_ms:>6} {row.talk_ms:>6} {row.consent:<10} "
            f"{'yes' if row.recording_id else 'no':<8} "
            f"{' '.join(offers.get(str(row.call_id), []))}"
        )
    print(f"== recordings (pbxctl recordings list; files under {OUT / 'recordings'})")
    for rec in recording_rows:
        print(
            f"   {str(rec.call_id)[:8]} {rec.path} {rec.duration_ms} ms, "
            f"sha256 {(rec.sha256 or '')[:12]}..., consent {rec.consent_policy} "
            f"(prompt {rec.consent_prompt_version}, digit {rec.consent_digit or 'none'}), "
            f"kept until {rec.retention_until:%Y-%m-%d}"
        )
    print(f"== agent_state_log: {len(log_rows)} rows (readiness billing reads these)")
    expected = sum(count for _, count, _ in CALLS)
    answered = sum(1 for r in rows if r.disposition == "answered")
    declined = sum(1 for r in rows if r.consent == "declined")
    if len(rows) != expected or answered != expected - 1:
        print(
            f"demo: expected {expected} CDRs with {expected - 1} answered, "
            f"found {len(rows)} with {answered}",
            file=sys.stderr,
        )
        return 1
    if len(recording_rows) != 1 or declined != 1:
        print(
            f"demo: expected one recorded call and one declined, found "
            f"{len(recording_rows)} recorded and {declined} declined",
            file=sys.stderr,
        )
        return 1
    print(
        f"== done: {len(rows)} calls, {answered} answered by agents, {len(rows)} CDRs, "
        f"{len(recording_rows)} recorded with consent, {declined} declined"
    )
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
