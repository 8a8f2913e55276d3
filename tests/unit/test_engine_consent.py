"""Recording consent and the recording itself, through the engine.

Each story feeds events at explicit instants: greeting -> consent prompt ->
queue -> bridge -> (recording, only with consent) -> CDR, and the ways a
recording changes mid-call: withdrawal, PCI pause, the agent's codes.
A Hypothesis property then throws random callers at every policy.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TypeVar

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from pbx_controller.core import actions as a
from pbx_controller.core import events as e
from pbx_controller.core.call_flow import CallState
from pbx_controller.core.cdr import CdrRecord
from pbx_controller.core.consent import (
    ConsentPolicy,
    ConsentRules,
    ConsentState,
    RecordingRules,
    WithdrawalPolicy,
)
from pbx_controller.core.engine import RECORDING_WAIT_MS, Engine, NotRecording, UnknownCall
from pbx_controller.core.model import (
    AgentProfile,
    Announcements,
    Directory,
    Queue,
    QueueMembership,
    Tenant,
)

T0 = datetime(2026, 3, 3, 10, 0, tzinfo=UTC)
CALL = "6f1c2a8e-0d3b-4e5f-9a7b-1c2d3e4f5a6b"
CHAN = "chan-1"
LEG = f"{CALL}-leg1"
A = TypeVar("A", bound=a.Action)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def of(kind: type[A], actions: list[a.Action]) -> list[A]:
    return [x for x in actions if isinstance(x, kind)]


class Line:
    """One tenant ("acme", DID 100, queue sales), one agent (ann), one call."""

    def __init__(
        self,
        policy: ConsentPolicy,
        *,
        agent_consents: bool = True,
        withdrawal: WithdrawalPolicy = WithdrawalPolicy.DELETE,
        call_id: str = CALL,
    ) -> None:
        tenant = Tenant(
            "acme",
            "Acme",
            greeting=("sound:hello",),
            consent=ConsentRules(policy, answer_timeout_ms=5_000),
            recording=RecordingRules(formats=("mp3",), withdrawal=withdrawal),
        )
        other = Tenant("globex", "Globex")
        queue = Queue("sales", "acme", wrapup_ms=0, announcements=Announcements(False, False))
        ann = AgentProfile(
            "ann",
            "Ann",
            "PJSIP/ann",
            memberships=(QueueMembership("sales"),),
            recording_consent=agent_consents,
        )
        directory = Directory.build(
            [tenant, other],
            [("100", "acme"), ("200", "globex")],
            queues=[queue],
            agents=[ann],
            did_queues=[("100", "sales")],
        )
        self.engine = Engine(directory)
        self.call_id = call_id
        self.leg = f"{call_id}-leg1"
        self.log: list[a.Action] = []
        self.feed(e.AgentCommand("ann", "login"), 0)
        self.feed(e.CallArrived(call_id, CHAN, "100", "+48221234567"), 1)

    def feed(self, event: e.Event, when: float) -> list[a.Action]:
        actions = self.engine.handle(event, at(when))
        self.log += actions
        return actions

    @property
    def consent(self) -> ConsentState:
        consent = self.engine.calls[self.call_id].consent
        assert consent is not None
        return consent.state

    @property
    def state(self) -> CallState:
        return self.engine.calls[self.call_id].state

    def greeting_over(self, when: float = 3) -> list[a.Action]:
        return self.feed(e.PlaybackFinished(f"{self.call_id}-pb1", CHAN), when)

    def prompt_over(self, when: float = 8, completed: bool = True) -> list[a.Action]:
        return self.feed(e.PlaybackFinished(f"{self.call_id}-pb2", CHAN, completed), when)

    def digit(self, digit: str, when: float, channel: str = CHAN) -> list[a.Action]:
        return self.feed(e.DtmfReceived(channel, digit, 100), when)

    def answer(self, when: float = 10) -> list[a.Action]:
        return self.feed(e.AgentLegAnswered(self.leg, self.call_id, "ann"), when)

    def legs_start(self, when: float) -> None:
        for role in ("caller", "agent"):
            self.feed(e.RecordingStarted(f"{self.call_id}-{role}"), when)

    def hang_up(self, when: float) -> list[a.Action]:
        actions = self.feed(e.HangupRequested(CHAN), when)
        return actions + self.feed(e.ChannelLeftApp(CHAN), when)

    def legs_finish(self, when: float) -> list[a.Action]:
        actions: list[a.Action] = []
        for role in ("caller", "agent"):
            actions += self.feed(e.RecordingFinished(f"{self.call_id}-{role}"), when)
        return actions

    def cdr(self) -> CdrRecord:
        (emitted,) = of(a.EmitCdr, self.log)
        return emitted.cdr


def test_notify_staying_on_the_line_records_the_call_in_stereo_legs() -> None:
    line = Line(ConsentPolicy.NOTIFY)
    (prompt,) = of(a.Play, line.greeting_over(3))
    assert prompt.media == ("sound:conf-now-recording", "sound:vm-press", "digits:9")
    assert line.state is CallState.CONSENT
    assert line.consent is ConsentState.ANNOUNCED
    queued = line.prompt_over(8)
    assert line.consent is ConsentState.GRANTED
    assert of(a.Originate, queued)  # queued, and its agent rings
    assert of(a.Originate, queued)
    answered = line.answer(10)
    (opened,) = of(a.OpenRecording, answered)
    assert (opened.call_id, opened.tenant_id, opened.started_at) == (CALL, "acme", at(10))
    assert opened.evidence.policy is ConsentPolicy.NOTIFY
    assert opened.evidence.state is ConsentState.GRANTED
    assert opened.evidence.at == at(8)
    assert of(a.RecordLeg, answered) == [
        a.RecordLeg(f"{CALL}-snoop-caller", CHAN, f"{CALL}-caller", f"snoop,{CALL},caller"),
        a.RecordLeg(f"{CALL}-snoop-agent", LEG, f"{CALL}-agent", f"snoop,{CALL},agent"),
    ]
    # The bridge is asked for before the recording: nothing waits on it.
    assert answered.index(of(a.Bridge, answered)[0]) < answered.index(opened)
    line.feed(e.RecordingStarted(f"{CALL}-caller"), 10.05)
    line.feed(e.RecordingStarted(f"{CALL}-agent"), 10.08)
    hung_up = line.hang_up(70)
    assert of(a.StopRecording, hung_up) == [
        a.StopRecording(f"{CALL}-snoop-caller", f"{CALL}-caller"),
        a.StopRecording(f"{CALL}-snoop-agent", f"{CALL}-agent"),
    ]
    assert a.StartTimer(f"recording/{CALL}", RECORDING_WAIT_MS) in hung_up
    assert line.cdr().consent == "granted"
    assert not of(a.ProcessRecording, line.log)  # the legs are still being written
    line.feed(e.RecordingFinished(f"{CALL}-caller"), 70.1)
    done = line.feed(e.RecordingFinished(f"{CALL}-agent"), 70.1)
    assert a.CancelTimer(f"recording/{CALL}") in done
    (process,) = of(a.ProcessRecording, done)
    job = process.job
    assert job.leg_starts_ms == ((f"{CALL}-agent", 80), (f"{CALL}-caller", 50))
    assert (job.paused, job.masked, job.trim_at_ms, job.erase, job.withdrawn) == (
        (),
        (),
        None,
        False,
        False,
    )
    assert job.formats == ("mp3",)
    assert job.started_at == at(10)
    assert line.engine.recordings == {}


def test_notify_opt_out_digit_during_the_prompt_declines_and_still_queues() -> None:
    line = Line(ConsentPolicy.NOTIFY)
    line.greeting_over(3)
    cut = line.digit("9", 5)
    assert cut == [a.StopPlayback(f"{CALL}-pb2")]
    assert line.consent is ConsentState.DECLINED
    assert line.state is CallState.CONSENT
    queued = line.prompt_over(5.1, completed=False)
    assert of(a.Originate, queued)  # queued, and its agent rings
    assert line.state is CallState.OFFERING
    answered = line.answer(7)
    assert of(a.Bridge, answered)
    assert not of(a.RecordLeg, answered)
    assert not of(a.OpenRecording, answered)
    line.hang_up(30)
    assert line.cdr().consent == "declined"


def test_notify_other_digits_change_nothing() -> None:
    line = Line(ConsentPolicy.NOTIFY)
    line.greeting_over(3)
    assert line.digit("5", 4) == []
    assert line.consent is ConsentState.ANNOUNCED
    line.prompt_over(8)
    assert line.consent is ConsentState.GRANTED


def test_opt_in_timeout_declines_with_full_service() -> None:
    line = Line(ConsentPolicy.OPT_IN)
    (prompt,) = of(a.Play, line.greeting_over(3))
    assert prompt.media == ("sound:vm-press", "digits:1")
    waiting = line.prompt_over(6)
    (timer,) = of(a.StartTimer, waiting)
    assert timer.delay_ms == 5_000
    assert line.state is CallState.CONSENT
    queued = line.feed(e.TimerFired(timer.timer_id), 11)
    assert line.consent is ConsentState.DECLINED
    assert of(a.Originate, queued)  # queued, and its agent rings
    assert of(a.Originate, queued)
    assert not of(a.RecordLeg, line.answer(12))
    line.hang_up(40)
    assert line.cdr().consent == "declined"


def test_opt_in_agree_digit_after_the_prompt_records() -> None:
    line = Line(ConsentPolicy.OPT_IN)
    line.greeting_over(3)
    (timer,) = of(a.StartTimer, line.prompt_over(6))
    agreed = line.digit("1", 7)
    assert a.CancelTimer(timer.timer_id) in agreed
    assert of(a.Originate, agreed)  # queued, and its agent rings
    assert line.consent is ConsentState.GRANTED
    assert len(of(a.RecordLeg, line.answer(9))) == 2
    recording = line.engine.recordings[CALL]
    assert recording.evidence.digit == "1"
    assert recording.evidence.channel_id == CHAN


def test_opt_in_other_digit_declines() -> None:
    line = Line(ConsentPolicy.OPT_IN)
    line.greeting_over(3)
    assert line.digit("4", 4) == [a.StopPlayback(f"{CALL}-pb2")]
    assert line.consent is ConsentState.DECLINED


def test_stop_recording_while_the_caller_is_asked_declines_and_queues_at_once() -> None:
    # Found by the state-machine test below: the consent timer of a caller
    # already declined by "stop recording" fired into a decided consent.
    line = Line(ConsentPolicy.OPT_IN)
    line.greeting_over(3)
    (timer,) = of(a.StartTimer, line.prompt_over(6))
    queued = line.feed(e.CallCommand("acme", CALL, "stop_recording"), 7)
    assert line.consent is ConsentState.DECLINED
    assert a.CancelTimer(timer.timer_id) in queued
    assert of(a.Originate, queued)  # queued, and its agent rings
    assert line.feed(e.TimerFired(timer.timer_id), 11) == []  # stale: nothing happens
    assert not of(a.RecordLeg, line.answer(12))


def test_stop_recording_during_the_consent_prompt_cuts_it() -> None:
    line = Line(ConsentPolicy.OPT_IN)
    line.greeting_over(3)
    stopped = line.feed(e.CallCommand("acme", CALL, "stop_recording"), 4)
    assert stopped == [a.StopPlayback(f"{CALL}-pb2")]
    assert line.consent is ConsentState.DECLINED
    assert of(a.Originate, line.prompt_over(5, completed=False))  # its end queues


def test_an_agent_without_consent_means_no_recording() -> None:
    line = Line(ConsentPolicy.NOTIFY, agent_consents=False)
    line.greeting_over(3)
    line.prompt_over(8)
    answered = line.answer(10)
    assert of(a.Bridge, answered)
    assert not of(a.RecordLeg, answered)
    line.hang_up(30)
    # The caller consented; nothing was recorded because of the agent.
    assert line.cdr().consent == "granted"
    assert not of(a.ProcessRecording, line.log)


def test_policy_off_never_asks_and_never_records() -> None:
    line = Line(ConsentPolicy.OFF)
    queued = line.greeting_over(3)
    assert of(a.Originate, queued)  # queued, and its agent rings
    assert not of(a.Play, queued)
    assert not of(a.RecordLeg, line.answer(5))
    line.hang_up(9)
    assert line.cdr().consent == "not_asked"


def test_a_call_id_that_is_not_a_uuid_is_never_recorded() -> None:
    line = Line(ConsentPolicy.NOTIFY, call_id="chan-born-id")
    line.greeting_over(3)
    line.prompt_over(8)
    assert not of(a.RecordLeg, line.answer(10))


def connected(policy: ConsentPolicy = ConsentPolicy.NOTIFY, **options: object) -> Line:
    line = Line(policy, **options)  # type: ignore[arg-type]
    line.greeting_over(3)
    line.prompt_over(8)
    line.answer(10)
    line.legs_start(10)
    return line


@pytest.mark.parametrize(
    ("withdrawal", "erase"),
    [(WithdrawalPolicy.DELETE, True), (WithdrawalPolicy.KEEP_UNTIL_WITHDRAWAL, False)],
)
def test_the_opt_out_digit_mid_call_withdraws_at_once(
    withdrawal: WithdrawalPolicy, erase: bool
) -> None:
    line = connected(withdrawal=withdrawal)
    line.digit("5", 20)  # a menu digit: masked, not a withdrawal
    assert not of(a.StopRecording, line.log)
    stopped = line.digit("9", 25)
    assert len(of(a.StopRecording, stopped)) == 2
    assert line.consent is ConsentState.WITHDRAWN
    # The call goes on without recording; a second 9 changes nothing.
    assert line.digit("9", 26) == []
    line.legs_finish(25.1)
    (process,) = of(a.ProcessRecording, line.log)
    assert process.job.trim_at_ms == 15_000
    assert process.job.withdrawn
    assert process.job.erase is erase
    assert process.job.masked[0] == (9_840, 10_060)  # the "5", 100 ms, +-60 ms
    line.hang_up(40)
    assert line.cdr().consent == "withdrawn"


def test_ops_stop_recording_is_tenant_scoped() -> None:
    line = connected()
    with pytest.raises(UnknownCall):
        line.feed(e.CallCommand("globex", CALL, "stop_recording"), 20)
    with pytest.raises(UnknownCall):
        line.feed(e.CallCommand("acme", "no-such-call", "stop_recording"), 20)
    assert not of(a.StopRecording, line.log)
    stopped = line.feed(e.CallCommand("acme", CALL, "stop_recording"), 21)
    assert len(of(a.StopRecording, stopped)) == 2
    assert line.consent is ConsentState.WITHDRAWN


def test_pci_pause_leaves_a_span_and_its_digits_are_not_consent() -> None:
    line = connected()
    paused = line.feed(e.CallCommand("acme", CALL, "pause_recording"), 20)
    assert of(a.PauseRecording, paused) == [
        a.PauseRecording(f"{CALL}-snoop-caller", f"{CALL}-caller"),
        a.PauseRecording(f"{CALL}-snoop-agent", f"{CALL}-agent"),
    ]
    assert line.feed(e.CallCommand("acme", CALL, "pause_recording"), 21) == []
    for n, digit in enumerate("4929"):  # card digits, a 9 among them
        line.digit(digit, 22 + n)
    assert not of(a.StopRecording, line.log)
    assert line.consent is ConsentState.GRANTED
    resumed = line.feed(e.CallCommand("acme", CALL, "resume_recording"), 30)
    assert len(of(a.ResumeRecording, resumed)) == 2
    line.hang_up(40)
    line.legs_finish(40)
    (process,) = of(a.ProcessRecording, line.log)
    assert process.job.paused == ((10_000, 20_000),)
    assert process.job.masked == ()  # nothing is written while paused


def test_the_agent_pauses_and_resumes_from_the_phone() -> None:
    line = connected()
    line.digit("*", 15, channel=LEG)
    assert len(of(a.PauseRecording, line.digit("7", 15.5, channel=LEG))) == 2
    line.digit("*", 18, channel=LEG)
    assert len(of(a.ResumeRecording, line.digit("8", 18.5, channel=LEG))) == 2
    line.digit("*", 20, channel=LEG)
    assert len(of(a.StopRecording, line.digit("9", 20.5, channel=LEG))) == 2
    assert line.consent is ConsentState.WITHDRAWN
    # The agent's digits never count as the caller's consent.
    assert line.engine.calls[CALL].consent.channel_id is None  # type: ignore[union-attr]


def test_pause_without_a_recording_is_refused() -> None:
    line = Line(ConsentPolicy.OPT_IN)
    line.greeting_over(3)
    with pytest.raises(NotRecording):
        line.feed(e.CallCommand("acme", CALL, "pause_recording"), 4)


def test_legs_never_reported_are_processed_after_the_wait() -> None:
    line = connected()
    line.hang_up(30)
    assert not of(a.ProcessRecording, line.log)
    done = line.feed(e.TimerFired(f"recording/{CALL}"), 60)
    (process,) = of(a.ProcessRecording, done)
    assert process.job.call_id == CALL
    assert line.feed(e.RecordingFinished(f"{CALL}-caller"), 61) == []


def test_a_leg_that_could_not_start_is_a_silent_channel() -> None:
    line = Line(ConsentPolicy.NOTIFY)
    line.greeting_over(3)
    line.prompt_over(8)
    line.answer(10)
    line.feed(e.RecordingStarted(f"{CALL}-caller"), 10)
    line.feed(e.ActionFailed(f"{CALL}-snoop-agent", "RecordLeg", "409"), 10)
    line.hang_up(20)
    done = line.feed(e.RecordingFinished(f"{CALL}-caller"), 20)
    (process,) = of(a.ProcessRecording, done)
    assert process.job.leg_starts_ms == ((f"{CALL}-caller", 0),)


# -- the property: no recording without consent ----------------------------------------

Step = tuple[str, str]
STEPS = st.lists(
    st.sampled_from(
        [
            ("digit", "1"),
            ("digit", "9"),
            ("digit", "5"),
            ("agent", "*"),
            ("agent", "7"),
            ("agent", "8"),
            ("agent", "9"),
            ("prompt", "done"),
            ("prompt", "cut"),
            ("timer", ""),
            ("answer", ""),
            ("pause", ""),
            ("resume", ""),
            ("stop", ""),
            ("hangup", ""),
        ]
    ),
    max_size=25,
)


@settings(max_examples=400, deadline=None)
@given(
    policy=st.sampled_from(list(ConsentPolicy)),
    agent_consents=st.booleans(),
    steps=STEPS,
)
def test_no_sequence_records_without_granted_consent(
    policy: ConsentPolicy, agent_consents: bool, steps: list[Step]
) -> None:
    line = Line(policy, agent_consents=agent_consents)
    line.greeting_over(1)
    when = 1.0
    ever_withdrawn = False
    for kind, value in steps:
        when += 0.5
        call = line.engine.calls.get(CALL)
        if call is None:
            break
        try:
            actions = _step(line, kind, value, when)
        except NotRecording:
            continue
        if call.consent is not None and call.consent.state in (
            ConsentState.WITHDRAWN,
            ConsentState.DECLINED,
        ):
            ever_withdrawn = ever_withdrawn or call.consent.state is ConsentState.WITHDRAWN
        for leg in of(a.RecordLeg, actions):
            # The one rule: a leg is recorded only with granted caller consent
            # and a consenting agent, and never again after a withdrawal.
            assert policy is not ConsentPolicy.OFF
            assert call.consent is not None
            assert call.consent.state is ConsentState.GRANTED
            assert agent_consents, leg
            assert not ever_withdrawn, leg
        for resumed in of(a.ResumeRecording, actions):
            assert call.consent is not None
            assert call.consent.state is ConsentState.GRANTED
            assert resumed.name in {leg.name for leg in of(a.RecordLeg, line.log)}
    # Whatever happened, the CDR says what consent was, if it was written.
    for emitted in of(a.EmitCdr, line.log):
        if of(a.RecordLeg, line.log):
            assert emitted.cdr.consent in ("granted", "withdrawn")


def _step(line: Line, kind: str, value: str, when: float) -> list[a.Action]:
    call = line.engine.calls[CALL]
    match kind:
        case "digit":
            return line.digit(value, when)
        case "agent":
            return line.digit(value, when, channel=LEG) if call.agent_channel else []
        case "prompt":
            if call.consent_prompt is None:
                return []
            return line.feed(e.PlaybackFinished(call.consent_prompt, CHAN, value == "done"), when)
        case "timer":
            timer = call.consent_timer
            return line.feed(e.TimerFired(timer), when) if timer else []
        case "answer":
            if call.state is not CallState.OFFERING:
                return []
            return line.answer(when)
        case "pause" | "resume" | "stop":
            return line.feed(e.CallCommand("acme", CALL, f"{kind}_recording"), when)
        case _:
            return line.hang_up(when)
