"""Consent-gated recording with real audio through the real Asterisk.

The caller is a Local channel: its outer half sits in this test's own ARI
app and plays a 440 Hz tone (and keys DTMF when the story says so); its
inner half dials the tenant's DID in pbx-inbound and is the controller's
caller. The agent's phone is Local/tone-agent@pbx-test-audio: the agent
leg the controller originates hears 1200 Hz from it. So a stored stereo
file can be checked channel by channel: caller left, agent right.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import uuid
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from pbx_controller.asterisk.ari import AriClient, AriConflict, AriNotFound, StreamConnected
from pbx_controller.core import actions as a
from pbx_controller.core.agent import AgentState
from pbx_controller.core.call_flow import CallState
from pbx_controller.core.cdr import CdrRecord, Disposition
from pbx_controller.core.consent import (
    ConsentPolicy,
    ConsentRules,
    RecordingRules,
    WithdrawalPolicy,
)
from pbx_controller.core.events import CallArrived
from pbx_controller.core.model import (
    AgentProfile,
    Announcements,
    Directory,
    Queue,
    QueueMembership,
    Tenant,
)
from pbx_controller.recordings.pipeline import RecordingPipeline
from pbx_controller.recordings.storage import RecordingStorage
from pbx_controller.sandbox import sipp
from pbx_controller.sandbox.asterisk import SandboxAsterisk, controller_settings, free_port
from pbx_controller.service import Controller, LoggingCdrSink
from pbx_controller.store import models as m
from pbx_controller.store.db import make_engine, make_sessionmaker, upgrade_to_head
from pbx_controller.store.recordings import recording_id_for
from tests.integration.helpers import Watcher, wait_until, watch
from tests.integration.test_http_api import pbxctl
from tests.integration.test_recording_capture import include_test_audio
from tests.unit.test_recordings_postprocess import goertzel, read_stereo, rms, window

pytestmark = pytest.mark.asterisk

CALLER_HZ, AGENT_HZ = 440, 1200
DID = "48225500"
# Short prompts keep the tests quick; the stock prompt is played by the demo.
PROMPT = ("sound:beep",)


def directory(
    policy: ConsentPolicy,
    *,
    agent_consents: bool = True,
    withdrawal: WithdrawalPolicy = WithdrawalPolicy.DELETE,
    timeout_ms: int = 1500,
    prompt: tuple[str, ...] = PROMPT,
) -> Directory:
    tenant = Tenant(
        "rec",
        "Rec Co",
        greeting=("sound:beep",),
        consent=ConsentRules(policy, prompt=prompt, answer_timeout_ms=timeout_ms),
        recording=RecordingRules(withdrawal=withdrawal),
    )
    queue = Queue(
        "rec-desk",
        "rec",
        ring_timeout_ms=10_000,
        wrapup_ms=0,
        announcements=Announcements(position=False, estimated_wait=False),
    )
    agent = AgentProfile(
        "ann",
        "Ann",
        "Local/tone-agent@pbx-test-audio/n",
        memberships=(QueueMembership("rec-desk"),),
        recording_consent=agent_consents,
    )
    other = Tenant("other", "Other Co")
    return Directory.build(
        [tenant, other],
        [(DID, "rec"), ("48225599", "other")],
        queues=[queue],
        agents=[agent],
        did_queues=[(DID, "rec-desk")],
    )


@dataclass
class Desk:
    controller: Controller
    watcher: Watcher
    caller_app: AriClient
    pipeline: RecordingPipeline
    spool: Path
    store: Path
    sessions: Any

    async def call(self, did: str = DID) -> Caller:
        tag = uuid.uuid4().hex[:10]
        outer, inner = f"caller-{tag}", f"caller-{tag}-in"
        await self.caller_app.originate(
            f"Local/{did}@pbx-inbound/n", channel_id=outer, other_channel_id=inner
        )
        caller = Caller(self, outer, inner)
        # The controller answers its half; ours then enters this test's app.
        call_id = await self.watcher.wait_for(caller.call_id)
        await wait_until(lambda: self.controller.engine.calls.get(call_id) is not None)
        async with asyncio.timeout(10):
            while True:
                try:
                    await caller.speak()
                    break
                except AriConflict:  # not in our app yet: the answer is on its way
                    await asyncio.sleep(0.05)
        return caller


@dataclass
class Caller:
    desk: Desk
    outer: str
    inner: str
    tones: int = 0
    known_id: str = ""

    def call_id(self) -> str:
        if not self.known_id:
            for step_event, _ in self.desk.watcher.steps:
                if isinstance(step_event, CallArrived) and step_event.channel_id == self.inner:
                    self.known_id = step_event.call_id
        return self.known_id

    @property
    def id(self) -> str:
        return self.call_id()

    def state(self) -> CallState | None:
        call = self.desk.controller.engine.calls.get(self.id)
        return call.state if call else None

    async def until(self, state: CallState, timeout: float = 15) -> None:
        await self.desk.watcher.wait_for(lambda: self.state() is state, timeout)

    async def press(self, digits: str) -> None:
        """ARI queues a channel's DTMF behind its playback (the endless
        tone): pause the tone, key the digits, then speak again."""
        app = self.desk.caller_app
        with contextlib.suppress(AriNotFound):
            await app.stop_playback(self.tone)
        await app.send_dtmf(self.outer, digits)
        await self.speak()

    async def speak(self) -> None:
        self.tones += 1
        await self.desk.caller_app.play(self.outer, self.tone, ["tone:440"])

    @property
    def tone(self) -> str:
        return f"{self.outer}-tone{self.tones}"

    async def hang_up(self) -> None:
        with contextlib.suppress(AriNotFound):
            await self.desk.caller_app.hangup(self.outer)

    def actions(self, kind: type[Any]) -> list[Any]:
        return [
            x
            for x in self.desk.watcher.actions(kind)
            if getattr(x, "call_id", getattr(getattr(x, "job", None), "call_id", None)) == self.id
            or self.id in getattr(x, "name", "")
        ]

    async def cdr(self) -> CdrRecord:
        def emitted() -> CdrRecord | None:
            return next(
                (x.cdr for x in self.desk.watcher.actions(a.EmitCdr) if x.cdr.call_id == self.id),
                None,
            )

        found = await self.desk.watcher.wait_for(emitted, 20)
        assert found is not None
        return found

    def files(self) -> list[Path]:
        """Every file anywhere in the spool or the store named after this call."""
        found = [p for p in self.desk.spool.rglob(f"*{self.id}*")]
        found += [p for p in self.desk.store.rglob(f"*{self.id}*")]
        return found


@pytest.fixture
async def caller_app(asterisk: SandboxAsterisk) -> AsyncIterator[AriClient]:
    await asyncio.to_thread(include_test_audio, asterisk)
    e = asterisk.endpoints
    client = AriClient(e.ari_url, e.ari_username, e.ari_password, f"callers-{uuid.uuid4().hex[:8]}")
    reader = asyncio.create_task(client.run_events())
    async with asyncio.timeout(10):
        assert isinstance(await client.events.get(), StreamConnected)
    yield client
    reader.cancel()
    await client.close()


@contextlib.asynccontextmanager
async def desk(
    asterisk: SandboxAsterisk,
    caller_app: AriClient,
    tmp_path: Path,
    directory_: Directory,
    database_url: str | None = None,
) -> AsyncIterator[Desk]:
    sessions = None
    engine = None
    if database_url is not None:
        await upgrade_to_head(database_url)
        engine = make_engine(database_url)
        sessions = make_sessionmaker(engine)
        async with sessions() as session, session.begin():
            session.add(m.Tenant(id="rec", name="Rec Co", recording_retention_days=30))
    store = tmp_path / "recordings"
    pipeline = RecordingPipeline(RecordingStorage(store), asterisk.recording_dir, sessions)
    settings = controller_settings(asterisk, http={"host": "127.0.0.1", "port": free_port()})
    controller = Controller(settings, directory_, LoggingCdrSink(), recordings=pipeline)
    watcher = watch(controller)
    try:
        async with controller:
            for agent_id in directory_.agents:
                if controller.engine.board.status(agent_id).state is AgentState.ON_CALL:
                    continue  # on a call an earlier run left talking (adopted)
                assert controller.agent_command(agent_id, "login") == "OK"
            yield Desk(
                controller, watcher, caller_app, pipeline, asterisk.recording_dir, store, sessions
            )
            await controller.executor.drain()
    finally:
        if engine is not None:
            await engine.dispose()


async def processed(desk_: Desk, call_id: str, timeout: float = 20) -> Any:
    def done() -> Any:
        return next((r for j, r in desk_.pipeline.processed if j.call_id == call_id), None)

    await wait_until(done, timeout)
    await desk_.controller.executor.drain()
    return done()


def wav_info(path: Path) -> tuple[int, int, float]:
    with wave.open(str(path), "rb") as reader:
        return (
            reader.getnchannels(),
            reader.getframerate(),
            reader.getnframes() * 1000 / reader.getframerate(),
        )


async def test_notify_and_staying_on_records_stereo_with_evidence(
    asterisk: SandboxAsterisk, caller_app: AriClient, tmp_path: Path, database_url: str
) -> None:
    async with desk(
        asterisk, caller_app, tmp_path, directory(ConsentPolicy.NOTIFY), database_url
    ) as d:
        caller = await d.call()
        await caller.until(CallState.CONNECTED, 20)
        await wait_until(lambda: len(caller.actions(a.RecordLeg)) == 2)
        await asyncio.sleep(3)  # deliberate: three seconds of conversation
        await caller.hang_up()
        cdr = await caller.cdr()
        result = await processed(d, caller.id)
        assert d.sessions is not None
        async with d.sessions() as session:
            row = await session.get(m.Recording, recording_id_for(uuid.UUID(caller.id)))

    assert cdr.consent == "granted"
    wav = result.wav
    assert wav is not None
    channels, rate, duration = wav_info(wav.path)
    assert (channels, rate) == (2, 8000)
    # The file is as long as the talk, to within a second.
    assert abs(duration - cdr.talk_ms) <= 1000, (duration, cdr.talk_ms)
    assert os.stat(wav.path).st_mode & 0o777 == 0o640
    left, right, _ = read_stereo(wav.path)
    middle = (int(duration / 2) - 500, int(duration / 2) + 500)
    assert goertzel(window(left, *middle), CALLER_HZ) > 1000
    assert goertzel(window(left, *middle), AGENT_HZ) < 100
    assert goertzel(window(right, *middle), AGENT_HZ) > 1000
    assert goertzel(window(right, *middle), CALLER_HZ) < 100
    # The raw legs are gone from Asterisk's spool.
    assert not list(asterisk.recording_dir.glob(f"{caller.id}*"))
    # The row holds the evidence and the checksum; the CDR will link to it.
    assert row is not None
    assert (row.consent_policy, row.consent_prompt_version) == ("notify", "v1")
    assert row.consent_digit is None  # implied: nobody pressed anything
    assert row.sha256 == wav.sha256
    assert row.duration_ms == wav.duration_ms
    assert row.erase_requested_at is None


async def test_notify_opt_out_digit_creates_no_file_at_all(
    asterisk: SandboxAsterisk, caller_app: AriClient, tmp_path: Path
) -> None:
    # The stock prompt (about 3 s): the digit comes while it plays.
    notify = directory(ConsentPolicy.NOTIFY, prompt=())
    async with desk(asterisk, caller_app, tmp_path, notify) as d:
        caller = await d.call()
        await caller.until(CallState.CONSENT)
        await caller.press("9")
        await caller.until(CallState.CONNECTED, 20)
        await asyncio.sleep(1.5)  # deliberate: talk a while, unrecorded
        assert caller.files() == []
        await caller.hang_up()
        cdr = await caller.cdr()
    assert cdr.consent == "declined"
    assert cdr.talk_ms > 1000  # full service all the same
    assert caller.actions(a.RecordLeg) == []
    assert caller.files() == []
    assert "snoop" not in asterisk.cli("core show channels concise")


async def test_opt_in_timeout_records_nothing(
    asterisk: SandboxAsterisk, caller_app: AriClient, tmp_path: Path
) -> None:
    async with desk(asterisk, caller_app, tmp_path, directory(ConsentPolicy.OPT_IN)) as d:
        caller = await d.call()
        await caller.until(CallState.CONNECTED, 20)  # after the 1.5 s timeout
        await asyncio.sleep(1)  # deliberate: talk a while, unrecorded
        await caller.hang_up()
        cdr = await caller.cdr()
    assert cdr.consent == "declined"
    assert caller.actions(a.RecordLeg) == []
    assert caller.files() == []


async def test_opt_in_agree_digit_records(
    asterisk: SandboxAsterisk, caller_app: AriClient, tmp_path: Path
) -> None:
    async with desk(
        asterisk, caller_app, tmp_path, directory(ConsentPolicy.OPT_IN, timeout_ms=5000)
    ) as d:
        caller = await d.call()
        await caller.until(CallState.CONSENT)
        await caller.press("1")
        await caller.until(CallState.CONNECTED, 20)
        await asyncio.sleep(1.5)  # deliberate: talk a while
        await caller.hang_up()
        cdr = await caller.cdr()
        result = await processed(d, caller.id)
    assert cdr.consent == "granted"
    assert result.wav is not None
    (opened,) = caller.actions(a.OpenRecording)
    assert opened.evidence.digit == "1"
    assert opened.evidence.channel_id == caller.inner


async def test_policy_off_and_an_agent_without_consent_never_record(
    asterisk: SandboxAsterisk, caller_app: AriClient, tmp_path: Path
) -> None:
    for policy, agent_consents in ((ConsentPolicy.OFF, True), (ConsentPolicy.NOTIFY, False)):
        async with desk(
            asterisk,
            caller_app,
            tmp_path,
            directory(policy, agent_consents=agent_consents),
        ) as d:
            caller = await d.call()
            await caller.until(CallState.CONNECTED, 20)
            await asyncio.sleep(1)  # deliberate: talk a while
            await caller.hang_up()
            cdr = await caller.cdr()
        assert cdr.consent == ("not_asked" if policy is ConsentPolicy.OFF else "granted")
        assert caller.actions(a.RecordLeg) == []
        assert caller.files() == []


async def test_withdrawal_mid_call_stops_the_file_and_flags_it(
    asterisk: SandboxAsterisk, caller_app: AriClient, tmp_path: Path, database_url: str
) -> None:
    async with desk(
        asterisk, caller_app, tmp_path, directory(ConsentPolicy.NOTIFY), database_url
    ) as d:
        caller = await d.call()
        await caller.until(CallState.CONNECTED, 20)
        await d.watcher.wait_for(
            lambda: (
                len(d.controller.engine.recordings.get(caller.id, None).leg_starts_ms) == 2  # type: ignore[union-attr]
                if caller.id in d.controller.engine.recordings
                else False
            )
        )
        await asyncio.sleep(2)  # deliberate: two seconds recorded
        await caller.press("9")
        await d.watcher.wait_for(lambda: caller.actions(a.StopRecording))
        await asyncio.sleep(2)  # deliberate: two more seconds, never recorded
        await caller.hang_up()
        cdr = await caller.cdr()
        result = await processed(d, caller.id)
        assert d.sessions is not None
        async with d.sessions() as session:
            rows = (
                await session.scalars(
                    select(m.Recording).where(m.Recording.call_id == uuid.UUID(caller.id))
                )
            ).all()
    (process,) = caller.actions(a.ProcessRecording)
    trim = process.job.trim_at_ms
    assert trim is not None
    assert 1800 <= trim <= 3500
    wav = result.wav
    assert wav is not None
    # The file ends at the withdrawal, not at the hang-up.
    assert abs(wav.duration_ms - trim) <= 100, (wav.duration_ms, trim)
    assert cdr.consent == "withdrawn"
    assert rows
    assert all(row.erase_requested_at is not None for row in rows)


async def test_pci_pause_leaves_silence_for_the_paused_span(
    asterisk: SandboxAsterisk, caller_app: AriClient, tmp_path: Path
) -> None:
    async with desk(asterisk, caller_app, tmp_path, directory(ConsentPolicy.NOTIFY)) as d:
        caller = await d.call()
        await caller.until(CallState.CONNECTED, 20)
        await wait_until(
            lambda: (
                caller.id in d.controller.engine.recordings
                and len(d.controller.engine.recordings[caller.id].leg_starts_ms) == 2
            )
        )
        await asyncio.sleep(1.0)  # deliberate: recorded
        await caller.press("5")  # a menu digit while recording: masked in the file
        await asyncio.sleep(1.0)  # deliberate: recorded
        assert d.controller.call_command("rec", caller.id, "pause_recording") == "OK"
        await caller.press("4111")  # card digits while paused: not a withdrawal
        await asyncio.sleep(1.5)  # deliberate: "card data"
        assert d.controller.call_command("rec", caller.id, "resume_recording") == "OK"
        await asyncio.sleep(1.5)  # deliberate: recorded again
        await caller.hang_up()
        cdr = await caller.cdr()
        result = await processed(d, caller.id)
    assert cdr.consent == "granted"
    (process,) = caller.actions(a.ProcessRecording)
    ((start, end),) = process.job.paused
    assert end - start >= 1500
    wav = result.wav
    assert wav is not None
    left, right, _ = read_stereo(wav.path)
    for samples in (left, right):
        assert rms(window(samples, start + 60, end - 60)) < 50  # silence, near zero
        assert rms(window(samples, start - 600, start - 100)) > 1000  # talk before
        assert rms(window(samples, end + 100, end + 600)) > 1000  # and after
    # The DTMF tone's span is zeroed in both channels (the agent kept talking
    # through it, so the right channel proves the mask), digits while paused
    # needed none.
    ((mask_start, mask_end),) = process.job.masked
    assert mask_end - mask_start >= 120
    assert rms(window(right, mask_start, mask_end)) == 0
    assert rms(window(right, mask_start - 400, mask_start - 100)) > 1000


async def test_pbxctl_stops_a_recording_and_never_crosses_tenants(
    asterisk: SandboxAsterisk, caller_app: AriClient, tmp_path: Path
) -> None:
    async with desk(asterisk, caller_app, tmp_path, directory(ConsentPolicy.NOTIFY)) as d:
        caller = await d.call()
        await caller.until(CallState.CONNECTED, 20)
        await wait_until(lambda: caller.id in d.controller.engine.recordings)
        port = d.controller.settings.http.port
        # Another tenant's operator: the call does not exist for them.
        code, _, err = await pbxctl(port, "call", "stop-recording", caller.id, "--tenant", "other")
        assert code == 1
        assert "no live call" in err
        assert caller.actions(a.StopRecording) == []
        code, out, _ = await pbxctl(port, "call", "list", "--tenant", "rec")
        assert code == 0
        assert caller.id in out
        assert "granted" in out
        code, out, _ = await pbxctl(port, "call", "stop-recording", caller.id, "--tenant", "rec")
        assert (code, out.strip()) == (0, f"call {caller.id}: recording stopped")
        assert len(caller.actions(a.StopRecording)) == 2
        code, _, err = await pbxctl(port, "call", "pause-recording", caller.id, "--tenant", "rec")
        assert code == 1
        assert "not being recorded" in err
        await caller.hang_up()
        cdr = await caller.cdr()
        await processed(d, caller.id)
    assert cdr.consent == "withdrawn"


# -- the randomized run ------------------------------------------------------------------

RANDOM_CALLS = int(os.environ.get("PBX_CONSENT_RANDOM_CALLS", "200"))
BEHAVIOURS = ("silent", "agree", "opt_out", "withdraw", "early_hangup")


def mixed_directory(rng: random.Random) -> tuple[Directory, dict[str, bool]]:
    """Three tenants, one per policy; eight agents in every queue, about
    half of them without recording consent in their employment terms."""
    tenants, dids, queues = [], [], []
    for n, policy in enumerate(ConsentPolicy):
        tenant_id = f"mix-{policy.value}"
        tenants.append(
            Tenant(
                tenant_id,
                tenant_id,
                greeting=("sound:beep",),
                consent=ConsentRules(policy, prompt=PROMPT, answer_timeout_ms=1200),
            )
        )
        dids.append((f"4822660{n}", tenant_id))
        queues.append(
            Queue(
                f"{tenant_id}-q",
                tenant_id,
                ring_timeout_ms=10_000,
                wrapup_ms=0,
                announcements=Announcements(position=False, estimated_wait=False),
            )
        )
    consents = {f"agent{n}": rng.random() < 0.5 for n in range(8)}
    agents = [
        AgentProfile(
            agent_id,
            agent_id,
            "Local/tone-agent@pbx-test-audio/n",
            memberships=tuple(QueueMembership(q.id) for q in queues),
            recording_consent=consents[agent_id],
        )
        for agent_id in consents
    ]
    directory_ = Directory.build(
        tenants,
        dids,
        queues=queues,
        agents=agents,
        did_queues=[(did, f"{tenant}-q") for did, tenant in dids],
    )
    return directory_, consents


async def test_a_randomized_run_never_records_without_consent(
    asterisk: SandboxAsterisk, caller_app: AriClient, tmp_path: Path
) -> None:
    seed = int(os.environ.get("PBX_CONSENT_SEED", str(random.SystemRandom().randrange(10**6))))
    print(f"seed {seed} ({RANDOM_CALLS} calls)")
    rng = random.Random(seed)
    directory_, consents = mixed_directory(rng)
    dids = {t: d for d, t in directory_.dids.items()}
    plans = [
        (rng.choice(sorted(dids)), rng.choice(BEHAVIOURS), rng.uniform(0.3, 1.0))
        for _ in range(RANDOM_CALLS)
    ]
    cdrs: dict[str, CdrRecord] = {}
    callers: list[Caller] = []
    limit = asyncio.Semaphore(8)

    async def one(d: Desk, tenant: str, behaviour: str, talk_s: float) -> None:
        async with limit:
            caller = await d.call(dids[tenant])
            callers.append(caller)
            policy = directory_.tenants[tenant].consent.policy
            asks = policy is not ConsentPolicy.OFF
            if asks and behaviour in ("agree", "opt_out", "early_hangup"):
                await caller.until(CallState.CONSENT)
                if behaviour == "early_hangup":
                    await caller.hang_up()
                    cdrs[caller.id] = await caller.cdr()
                    return
                await caller.press("1" if behaviour == "agree" else "9")
            await caller.until(CallState.CONNECTED, 30)
            await asyncio.sleep(talk_s)  # deliberate: the conversation
            if behaviour == "withdraw":
                await caller.press("9")
                await asyncio.sleep(0.3)  # deliberate: a little more talk
            await caller.hang_up()
            cdrs[caller.id] = await caller.cdr()

    unexplained: set[str] = set()

    async def watch_the_spool(d: Desk) -> None:
        """Every 20 ms: any file Asterisk writes must belong to a call the
        controller had decided to record (consent granted) before it."""
        while True:
            started = {o.call_id for o in d.watcher.actions(a.OpenRecording)}
            for path in asterisk.recording_dir.glob("*"):
                if path.name[:36] not in started:
                    unexplained.add(path.name)
            await asyncio.sleep(0.02)

    async with desk(asterisk, caller_app, tmp_path, directory_) as d:
        spool_watch = asyncio.create_task(watch_the_spool(d))
        async with asyncio.timeout(600):
            await asyncio.gather(*(one(d, *plan) for plan in plans))
        spool_watch.cancel()
        opened = d.watcher.actions(a.OpenRecording)
        await wait_until(lambda: len(d.pipeline.processed) == len(opened), 60)
        await d.controller.executor.drain()

    assert len(cdrs) == RANDOM_CALLS
    assert unexplained == set()
    recorded = {o.call_id for o in opened}
    outcomes: dict[str, int] = {}
    for caller in callers:
        cdr = cdrs[caller.id]
        outcomes[cdr.consent] = outcomes.get(cdr.consent, 0) + 1
        policy = directory_.tenants[cdr.tenant_id or ""].consent.policy
        allowed = (
            policy is not ConsentPolicy.OFF
            and cdr.agent_id is not None
            and consents[cdr.agent_id]
            and cdr.consent in ("granted", "withdrawn")
        )
        if caller.id in recorded:
            # Recorded: the caller had granted it, and so had the agent.
            assert allowed, (seed, cdr)
            (start,) = [o for o in opened if o.call_id == caller.id]
            assert start.evidence.state.value == "granted"
        else:
            # Never recorded: not one file, raw or stored, at any time we look.
            assert caller.files() == [], (seed, cdr)
            assert not (allowed and cdr.consent == "granted" and cdr.talk_ms > 500), (seed, cdr)
    print(f"outcomes {outcomes}, recorded {len(recorded)} of {len(callers)}")
    assert len(recorded) > 0
    assert outcomes.get("declined", 0) > 0


async def test_sipp_caller_and_phone_streaming_rtp_are_recorded_in_stereo(
    asterisk: SandboxAsterisk, caller_app: AriClient, tmp_path: Path
) -> None:
    """The same with real SIP on both sides: sipp streams RTP (G.711) from
    the caller and from the agent's phone."""
    base = directory(ConsentPolicy.NOTIFY)
    agent = dataclasses.replace(base.agents["ann"], endpoint="PJSIP/agent-rtp")
    sip_directory = Directory.build(
        base.tenants.values(),
        base.dids.items(),
        queues=base.queues.values(),
        agents=[agent],
        did_queues=base.did_queues.items(),
    )
    phone = sipp.AgentPhone(ring_ms=200, talk_ms=3000, tone_hz=AGENT_HZ)
    async with phone:
        await asyncio.to_thread(asterisk.set_agent_phones, {"agent-rtp": phone.address})
        async with desk(asterisk, caller_app, tmp_path, sip_directory) as d:
            result = await sipp.call(asterisk.endpoints.sip_port, DID, tone_hz=CALLER_HZ)
            assert (result.successful, result.failed) == (1, 0)
            (opened,) = d.watcher.actions(a.OpenRecording)
            stored = await processed(d, opened.call_id)
            (emitted,) = d.watcher.actions(a.EmitCdr)
    assert emitted.cdr.consent == "granted"
    wav = stored.wav
    assert wav is not None
    assert abs(wav.duration_ms - emitted.cdr.talk_ms) <= 1000
    left, right, _ = read_stereo(wav.path)
    middle = (wav.duration_ms // 2 - 500, wav.duration_ms // 2 + 500)
    assert goertzel(window(left, *middle), CALLER_HZ) > 1000
    assert goertzel(window(left, *middle), AGENT_HZ) < 100
    assert goertzel(window(right, *middle), AGENT_HZ) > 1000
    assert goertzel(window(right, *middle), CALLER_HZ) < 100


async def test_a_restarted_controller_stops_the_recordings_it_lost_and_the_call_goes_on(
    asterisk: SandboxAsterisk, caller_app: AriClient, tmp_path: Path
) -> None:
    """The controller dies mid-call (its task is cancelled: no stop is sent).
    The next run finds the snoop channels in its app and hangs them up, so
    nothing goes on being recorded that no run can stop or withdraw. The
    conversation itself goes on: the next run adopts the call, bridged with
    the same agent leg, and nobody is sent to the fallback."""
    async with desk(asterisk, caller_app, tmp_path, directory(ConsentPolicy.NOTIFY)) as d:
        caller = await d.call()
        await caller.until(CallState.CONNECTED, 20)
        await wait_until(
            lambda: (
                caller.id in d.controller.engine.recordings
                and len(d.controller.engine.recordings[caller.id].leg_starts_ms) == 2
            )
        )
        # Gone without a word: no StopRecording reaches Asterisk.
        d.controller.executor.submit = lambda actions: None  # type: ignore[method-assign]
    assert "snoop" in asterisk.cli("core show channels concise")
    agent_leg = d.controller.engine.calls[caller.id].agent_channel
    assert agent_leg is not None
    second = tmp_path / "second"
    async with desk(asterisk, caller_app, second, directory(ConsentPolicy.NOTIFY)) as d2:
        await wait_until(lambda: "snoop" not in asterisk.cli("core show channels concise"), 10)
        adopted = d2.controller.engine.calls[caller.id]
        assert (adopted.state, adopted.agent_channel) == (CallState.CONNECTED, agent_leg)
        assert not adopted.recorded  # nothing is recorded any more
        legs = sorted(asterisk.recording_dir.glob(f"{caller.id}*"))
        assert [p.name for p in legs] == [f"{caller.id}-agent.wav", f"{caller.id}-caller.wav"]
        sizes = [p.stat().st_size for p in legs]
        await asyncio.sleep(0.5)  # deliberate: the files no longer grow
        assert [p.stat().st_size for p in legs] == sizes
        await caller.hang_up()
        ended = await d2.watcher.wait_for(lambda: d2.watcher.actions(a.EmitCdr), 10)
        assert [x.cdr.disposition for x in ended] == [Disposition.ANSWERED]
        assert not d2.watcher.actions(a.ContinueInDialplan)  # nobody went to the fallback
    for path in legs:
        path.unlink()
