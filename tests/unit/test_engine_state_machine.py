"""Hypothesis drives the engine through random interleavings of many calls.

The engine and the transition table must agree: the engine raises
InvalidTransition exactly for the (state, event) pairs the table lacks, and
everything the table allows is handled. Across any interleaving: one CDR per
call, none lost, no action for a call that already ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import hypothesis
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from pbx_controller.core import actions as a
from pbx_controller.core import events as e
from pbx_controller.core.call_flow import CALL_TRANSITIONS, ENGINE_MOVES, CallState
from pbx_controller.core.cdr import CdrRecord, Disposition
from pbx_controller.core.engine import Engine
from pbx_controller.core.machine import InvalidTransition
from pbx_controller.core.model import Directory, Tenant

KNOWN = {"1001": "acme", "1002": "acme", "2001": "globex"}
UNKNOWN = ["9999", "0"]
T0 = datetime(2025, 3, 30, 0, 30, tzinfo=UTC)  # Warsaw's spring-forward night


@dataclass
class CallRef:
    """What the test knows about one call it started."""

    call_id: str
    channel_id: str
    did: str
    adopted: bool = False
    arrived_at: datetime = T0
    ended: bool = False
    cdrs: list[CdrRecord] = field(default_factory=list)
    playback_ids: list[str] = field(default_factory=list)

    @property
    def known(self) -> bool:
        return self.did in KNOWN


class EngineMachine(RuleBasedStateMachine):
    calls = Bundle("calls")

    def __init__(self) -> None:
        super().__init__()
        tenants = [Tenant("acme", "Acme"), Tenant("globex", "Globex", greeting=("sound:g",))]
        self.engine = Engine(Directory.build(tenants, KNOWN.items()))
        self.now = T0
        self.serial = 0
        self.refs: dict[str, CallRef] = {}
        self.channel_of: dict[str, CallRef] = {}

    # -- the feeding helper: every rule goes through here ------------------------------

    def feed(self, ref: CallRef | None, event: e.Event) -> list[a.Action]:
        name = type(event).__name__
        live = self.engine.calls.get(ref.call_id) if ref is not None and not ref.ended else None
        before: CallState | None = live.state if live is not None else None
        refused: InvalidTransition | None = None
        try:
            actions = self.engine.handle(event, self.now)
        except InvalidTransition as err:
            refused = err
        if refused is not None:
            # Engine and table agree: it raised only for a pair the table lacks.
            assert before is not None, f"{name} raised for a call the engine does not track"
            assert not CALL_TRANSITIONS.allows(before, name), (before, name)
            assert (refused.state, refused.event) == (before, name)
            # And it was refused, not half-done.
            assert ref is not None
            assert self.engine.calls[ref.call_id].state is before
            hypothesis.event(f"refused {name} in {before.value}")
            return []
        if before is not None:
            assert CALL_TRANSITIONS.allows(before, name), (before, name)
        self.check_actions(event, actions)
        return actions

    def check_actions(self, event: e.Event, actions: list[a.Action]) -> None:
        for action in actions:
            if isinstance(action, a.EmitCdr):
                ref = self.refs[action.cdr.call_id]
                assert not ref.ended, f"second CDR for {ref.call_id}"
                ref.cdrs.append(action.cdr)
                ref.ended = True
                continue
            channel_id = getattr(action, "channel_id", None)
            assert channel_id is not None, action
            owner = self.channel_of[channel_id]
            assert not owner.ended, f"{action} for the ended call {owner.call_id}"
            assert channel_id == getattr(event, "channel_id", channel_id)
            if isinstance(action, a.Answer):
                assert owner.known, action
                assert not owner.adopted, action
            if isinstance(action, a.Play):
                assert owner.known, action
                assert action.playback_id.startswith(owner.call_id)
                owner.playback_ids.append(action.playback_id)

    # -- arrivals ----------------------------------------------------------------

    def _new_ref(self, did: str, *, adopted: bool = False) -> CallRef:
        self.serial += 1
        ref = CallRef(f"call-{self.serial}", f"1741.{self.serial}", did, adopted=adopted)
        self.refs[ref.call_id] = ref
        self.channel_of[ref.channel_id] = ref
        return ref

    @initialize(target=calls)
    def first_call(self) -> CallRef:
        return self._arrive_known("1001")

    @rule(target=calls, did=st.sampled_from(sorted(KNOWN)))
    def arrive_known(self, did: str) -> CallRef:
        return self._arrive_known(did)

    def _arrive_known(self, did: str) -> CallRef:
        ref = self._new_ref(did)
        ref.arrived_at = self.now
        actions = self.feed(None, e.CallArrived(ref.call_id, ref.channel_id, did, "600"))
        assert [type(x) for x in actions] == [a.Answer, a.Play]
        return ref

    @rule(target=calls, did=st.sampled_from(UNKNOWN))
    def arrive_unknown(self, did: str) -> CallRef:
        ref = self._new_ref(did)
        ref.arrived_at = self.now
        actions = self.feed(None, e.CallArrived(ref.call_id, ref.channel_id, did))
        assert actions == [a.ContinueInDialplan(ref.channel_id, "pbx-unknown-did")]
        return ref

    @rule(
        target=calls,
        did=st.sampled_from([*sorted(KNOWN), *UNKNOWN]),
        ago=st.integers(min_value=0, max_value=3600),
    )
    def adopt(self, did: str, ago: int) -> CallRef:
        ref = self._new_ref(did, adopted=True)
        ref.arrived_at = self.now - timedelta(seconds=ago)
        event = e.CallAdopted(ref.call_id, ref.channel_id, did, ref.arrived_at)
        assert self.feed(None, event) == [a.ContinueInDialplan(ref.channel_id, "pbx-fallback")]
        return ref

    # -- what happens to a call ------------------------------------------------------------

    @rule(seconds=st.floats(min_value=0, max_value=600, allow_nan=False))
    def time_passes(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    @rule(ref=calls, completed=st.booleans(), which=st.integers(min_value=0, max_value=2))
    def playback_finished(self, ref: CallRef, completed: bool, which: int) -> None:
        # A playback the engine started, or one it never heard of.
        ids = [*ref.playback_ids, f"{ref.call_id}-pb{len(ref.playback_ids) + 1}"]
        playback_id = ids[min(which, len(ids) - 1)]
        self.feed(ref, e.PlaybackFinished(playback_id, ref.channel_id, completed))

    @rule(ref=calls, digit=st.sampled_from("0123456789*#"))
    def dtmf(self, ref: CallRef, digit: str) -> None:
        assert self.feed(ref, e.DtmfReceived(ref.channel_id, digit)) == []

    @rule(ref=calls)
    def hangup_requested(self, ref: CallRef) -> None:
        assert self.feed(ref, e.HangupRequested(ref.channel_id)) == []

    @rule(ref=calls)
    def channel_left_app(self, ref: CallRef) -> None:
        self.end(ref, e.ChannelLeftApp(ref.channel_id))

    @rule(ref=calls, lost=st.booleans())
    def channel_hung_up(self, ref: CallRef, lost: bool) -> None:
        self.end(ref, e.ChannelHungUp(ref.channel_id, lost=lost))

    def end(self, ref: CallRef, event: e.Event) -> None:
        was_ended = ref.ended
        actions = self.feed(ref, event)
        if was_ended:
            assert actions == []
        else:
            # Leaving the app or hanging up always ends the call with its CDR.
            assert len(actions) == 1, actions
            assert isinstance(actions[0], a.EmitCdr), actions
            assert ref.ended

    @rule(ref=calls, gone=st.booleans(), action=st.sampled_from(["Answer", "Play", "Hangup"]))
    def action_failed(self, ref: CallRef, gone: bool, action: str) -> None:
        actions = self.feed(ref, e.ActionFailed(ref.channel_id, action, "boom", gone=gone))
        assert all(isinstance(x, a.ContinueInDialplan) for x in actions)
        if gone:
            assert actions == []

    @rule(ref=calls, name=st.sampled_from(["greeting", "queue-announce"]))
    def timer_fired(self, ref: CallRef, name: str) -> None:
        # No state of today's table takes a timer: this must be refused by name.
        self.feed(ref, e.TimerFired(f"{ref.call_id}/{name}"))

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def one_cdr_per_ended_call_and_none_for_live_ones(self) -> None:
        for ref in self.refs.values():
            assert len(ref.cdrs) == (1 if ref.ended else 0), ref
            assert (ref.call_id in self.engine.calls) is not ref.ended

    @invariant()
    def cdrs_are_consistent(self) -> None:
        for ref in self.refs.values():
            for cdr in ref.cdrs:
                assert cdr.call_id == ref.call_id
                assert cdr.did == ref.did
                assert cdr.arrived_at == ref.arrived_at
                assert cdr.ended_at >= cdr.arrived_at
                assert cdr.ended_at <= self.now
                assert (cdr.tenant_id is not None) is ref.known
                if ref.known:
                    assert cdr.tenant_id == KNOWN[ref.did]
                assert (cdr.disposition is Disposition.UNKNOWN_DID) is not ref.known

    @invariant()
    def engine_tracks_exactly_the_live_calls(self) -> None:
        live = {ref.channel_id for ref in self.refs.values() if not ref.ended}
        assert set(self.engine.channel_ids()) == live
        for playback_id in self.engine.playback_ids():
            owner = self.refs[playback_id.rsplit("-pb", 1)[0]]
            assert not owner.ended

    @invariant()
    def live_calls_are_in_a_live_state(self) -> None:
        for call in self.engine.calls.values():
            assert call.state in {CallState.GREETING, CallState.ENDING}


EngineMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngineMachine = EngineMachine.TestCase


# -- the table on its own ---------------------------------------------------------------


def test_every_table_pair_leads_to_call_states() -> None:
    assert CALL_TRANSITIONS.edges, "empty table"
    for (state, event), targets in CALL_TRANSITIONS.edges.items():
        assert isinstance(state, CallState), state
        assert isinstance(event, str), (state, event)
        assert event, state
        assert targets, f"{state} on {event} leads nowhere"
        for target in targets:
            assert isinstance(target, CallState), (state, event, target)
            assert CALL_TRANSITIONS.move(state, event, target) is target


# One event of each kind for the call "call-1" on channel "chan-1".
EVENTS_FOR_CALL_1: list[e.Event] = [
    e.PlaybackFinished("call-1-pb1", "chan-1"),
    e.PlaybackFinished("call-1-pb1", "chan-1", completed=False),
    e.DtmfReceived("chan-1", "1"),
    e.HangupRequested("chan-1"),
    e.ChannelHungUp("chan-1"),
    e.ChannelHungUp("chan-1", lost=True),
    e.ChannelLeftApp("chan-1"),
    e.TimerFired("call-1/any"),
    e.ActionFailed("chan-1", "Play", "boom"),
    e.ActionFailed("chan-1", "Play", "boom", gone=True),
    e.CallCommand("acme", "call-1", "stop_recording"),
]


def _engine_with_call_1_in(state: CallState) -> Engine:
    engine = Engine(Directory.build([Tenant("acme", "Acme")], [("1001", "acme")]))
    engine.handle(e.CallArrived("call-1", "chan-1", "1001"), T0)
    if state is CallState.ENDING:
        engine.handle(e.HangupRequested("chan-1"), T0)
    assert engine.calls["call-1"].state is state
    return engine


@pytest.mark.parametrize("state", [CallState.GREETING, CallState.ENDING])
@pytest.mark.parametrize("event", EVENTS_FOR_CALL_1, ids=repr)
def test_engine_and_table_agree_on_every_pair(state: CallState, event: e.Event) -> None:
    engine = _engine_with_call_1_in(state)
    name = type(event).__name__
    if CALL_TRANSITIONS.allows(state, name):
        engine.handle(event, T0 + timedelta(seconds=1))
        after = engine.calls["call-1"].state if "call-1" in engine.calls else CallState.ENDED
        assert after in CALL_TRANSITIONS.targets(state, name)
    else:
        with pytest.raises(InvalidTransition):
            engine.handle(event, T0 + timedelta(seconds=1))


def test_every_event_kind_is_probed() -> None:
    probed = {type(event).__name__ for event in EVENTS_FOR_CALL_1}
    arrivals = {"CallArrived", "CallAdopted"}  # NEW only: they create the call
    # Not about the caller's channel: agent commands go to the board, and an
    # agent leg's answer is tested with the queue flow (test_engine_queue.py).
    # Recording legs are tested with the consent flow (test_engine_consent.py).
    # A restart's restore and stop touch agents only (test_engine_queue.py).
    elsewhere = {
        "AgentCommand",
        "AgentLegAnswered",
        "RecordingStarted",
        "RecordingFinished",
        "AgentRestored",
        "ControllerStopping",
    }
    assert probed | arrivals | elsewhere == {cls.__name__ for cls in e.Event.__args__}


def test_every_table_event_is_a_core_event() -> None:
    names = {cls.__name__ for cls in e.Event.__args__}
    assert CALL_TRANSITIONS.events() <= names | ENGINE_MOVES


def test_ended_is_final_and_every_live_state_can_end() -> None:
    assert not any(state is CallState.ENDED for state, _ in CALL_TRANSITIONS.edges)
    for state in (CallState.GREETING, CallState.ENDING):
        for name in ("ChannelLeftApp", "ChannelHungUp"):
            assert CALL_TRANSITIONS.targets(state, name) == {CallState.ENDED}


def test_every_state_is_reachable_from_new() -> None:
    seen, todo = {CallState.NEW}, [CallState.NEW]
    while todo:
        state = todo.pop()
        for (source, _), targets in CALL_TRANSITIONS.edges.items():
            if source is state:
                todo += [t for t in targets if t not in seen]
                seen |= targets
    assert seen == set(CallState)
