"""ARI JSON -> core events, and the translation's contract: a core event, None,
or AriEventError; never anything else, whatever the JSON."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import example, given, settings

from pbx_controller.asterisk.events import (
    AriEventError,
    TalkingCall,
    adopted_call,
    answer_time,
    stasis_role,
    talking_call,
    translate,
)
from pbx_controller.core import events as e

ASTERISK_ID = "02:42:ac:11:00:02"


def channel(**overrides: Any) -> dict[str, Any]:
    """A channel snapshot as Asterisk 22 sends it (ari.conf channelvars)."""
    snapshot: dict[str, Any] = {
        "id": "1741000000.42",
        "name": "PJSIP/pstn-0000002a",
        "state": "Ring",
        "protocol_id": "3c0f9e1a-5b7e@127.0.0.1",
        "caller": {"name": "Jan Kowalski", "number": "+48221234567"},
        "connected": {"name": "", "number": ""},
        "accountcode": "",
        "dialplan": {
            "context": "pbx-inbound",
            "exten": "1001",
            "priority": 4,
            "app_name": "Stasis",
            "app_data": "pbx-controller,inbound,1001",
        },
        "creationtime": "2025-03-03T09:00:00.123+0100",
        "language": "en",
        "channelvars": {
            "PBX_CALL_ID": "6f1c2a7e-2f0b-4a53-9d0e-5e6f7a8b9c0d",
            "PBX_TENANT": "",
            "PBX_ROLE": "",
        },
    }
    snapshot.update(overrides)
    return snapshot


def ari(kind: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "timestamp": "2025-03-03T09:00:01.456+0100",
        "asterisk_id": ASTERISK_ID,
        "application": "pbx-controller",
        **fields,
    }


def playback(state: str) -> dict[str, Any]:
    return {
        "id": "6f1c2a7e-pb1",
        "media_uri": "sound:hello-world",
        "media_uris": ["sound:hello-world"],
        "target_uri": "channel:1741000000.42",
        "language": "en",
        "state": state,
    }


# -- examples ---------------------------------------------------------------------


def test_stasis_start_inbound_is_a_call_arrival() -> None:
    event = ari("StasisStart", args=["inbound", "1001"], channel=channel())
    assert translate(event) == e.CallArrived(
        call_id="6f1c2a7e-2f0b-4a53-9d0e-5e6f7a8b9c0d",
        channel_id="1741000000.42",
        did="1001",
        caller_number="+48221234567",
        caller_name="Jan Kowalski",
    )
    assert stasis_role(event) == "inbound"


@pytest.mark.parametrize(("state", "answered"), [("Up", True), ("Ring", False), ("Ringing", False)])
def test_stasis_start_says_whether_the_dialplan_answered(state: str, answered: bool) -> None:
    event = ari("StasisStart", args=["inbound", "1001"], channel=channel(state=state))
    result = translate(event)
    assert isinstance(result, e.CallArrived)
    assert result.answered is answered


@pytest.mark.parametrize(
    "channelvars",
    [
        {"PBX_CALL_ID": "", "PBX_TENANT": "", "PBX_ROLE": ""},  # variable set but empty
        {"PBX_TENANT": ""},  # not in the snapshot at all
        None,  # ari.conf without channelvars
    ],
    ids=["empty", "absent", "no-channelvars"],
)
def test_stasis_start_without_a_call_id_falls_back_to_the_channel_id(
    channelvars: dict[str, str] | None,
) -> None:
    snapshot = channel(channelvars=channelvars)
    if channelvars is None:
        del snapshot["channelvars"]
    result = translate(ari("StasisStart", args=["inbound", "1001"], channel=snapshot))
    assert isinstance(result, e.CallArrived)
    assert (result.call_id, result.channel_id) == ("1741000000.42", "1741000000.42")


def test_stasis_start_with_an_anonymous_caller() -> None:
    snapshot = channel(caller={"name": "", "number": ""})
    result = translate(ari("StasisStart", args=["inbound", "1001"], channel=snapshot))
    assert isinstance(result, e.CallArrived)
    assert (result.caller_number, result.caller_name) == ("", "")


@pytest.mark.parametrize("args", [["outbound", "c1"], ["", "1001"]])
def test_stasis_start_of_other_roles_is_not_for_the_core(args: list[str]) -> None:
    assert translate(ari("StasisStart", args=args, channel=channel())) is None


def test_stasis_start_of_an_agent_leg_names_call_and_agent() -> None:
    result = translate(ari("StasisStart", args=["agent", "call-1", "anna"], channel=channel()))
    assert isinstance(result, e.AgentLegAnswered)
    assert (result.call_id, result.agent_id) == ("call-1", "anna")


@pytest.mark.parametrize("args", [["agent", "201"], ["agent", "", "anna"], ["agent", "c", ""]])
def test_agent_leg_without_call_or_agent_is_an_error(args: list[str]) -> None:
    with pytest.raises(AriEventError, match="agent StasisStart"):
        translate(ari("StasisStart", args=args, channel=channel()))


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"args": ["inbound"], "channel": channel()}, "without a DID"),
        ({"args": ["inbound", ""], "channel": channel()}, "without a DID"),
        ({"args": ["inbound", 1001], "channel": channel()}, "without a DID"),
        ({"args": [], "channel": channel()}, "without app arguments"),
        ({"channel": channel()}, "without app arguments"),
        ({"args": ["inbound", "1001"]}, "missing channel.id"),
        ({"args": ["inbound", "1001"], "channel": channel(id="")}, "channel_id must not be empty"),
        ({"args": ["inbound", "1001"], "channel": channel(id=None)}, "channel.id is not a string"),
    ],
)
def test_unreadable_stasis_start_is_an_ari_event_error(
    fields: dict[str, Any], problem: str
) -> None:
    with pytest.raises(AriEventError, match=problem) as info:
        translate(ari("StasisStart", **fields))
    assert str(info.value).startswith("StasisStart: ")


@pytest.mark.parametrize(
    ("state", "completed"),
    [("done", True), ("failed", False), ("cancelled", False), ("playing", False)],
)
def test_playback_finished_completed_only_when_done(state: str, completed: bool) -> None:
    assert translate(ari("PlaybackFinished", playback=playback(state))) == e.PlaybackFinished(
        "6f1c2a7e-pb1", "1741000000.42", completed
    )


def test_playback_finished_on_a_bridge_has_no_channel() -> None:
    on_bridge = {**playback("done"), "target_uri": "bridge:7d0e"}
    assert translate(ari("PlaybackFinished", playback=on_bridge)) == e.PlaybackFinished(
        "6f1c2a7e-pb1", "", True
    )


@pytest.mark.parametrize(
    "broken",
    [{**playback("done"), "id": ""}, {k: v for k, v in playback("done").items() if k != "id"}],
    ids=["empty-id", "no-id"],
)
def test_playback_finished_without_an_id_is_an_error(broken: dict[str, Any]) -> None:
    with pytest.raises(AriEventError, match=r"^PlaybackFinished: "):
        translate(ari("PlaybackFinished", playback=broken))


@pytest.mark.parametrize("digit", ["0", "5", "9", "*", "#", "A", "D"])
def test_dtmf(digit: str) -> None:
    event = ari("ChannelDtmfReceived", digit=digit, duration_ms=120, channel=channel(state="Up"))
    assert translate(event) == e.DtmfReceived("1741000000.42", digit, 120)


@pytest.mark.parametrize("digit", ["", "55", "x", "E", None, True, 12])
def test_dtmf_with_a_bad_digit_is_an_error(digit: object) -> None:
    with pytest.raises(AriEventError, match=r"^ChannelDtmfReceived: "):
        translate(ari("ChannelDtmfReceived", digit=digit, duration_ms=80, channel=channel()))


def test_dtmf_duration_of_the_wrong_type_is_zero() -> None:
    event = ari("ChannelDtmfReceived", digit="1", duration_ms="80", channel=channel())
    assert translate(event) == e.DtmfReceived("1741000000.42", "1", 0)


@pytest.mark.parametrize(("cause", "expected"), [(16, 16), (17, 17), (None, 16), ("x", 16)])
def test_hangup_request(cause: object, expected: int) -> None:
    event = ari("ChannelHangupRequest", cause=cause, channel=channel(state="Up"))
    assert translate(event) == e.HangupRequested("1741000000.42", expected)


@pytest.mark.parametrize(("soft", "by_system"), [(True, True), (False, False), ("yes", False)])
def test_a_soft_hangup_request_is_asterisk_s_own(soft: object, by_system: bool) -> None:
    # Measured on Asterisk 22: "soft": true for `channel request hangup` and
    # an ARI DELETE; absent when the far end hangs up (a Local channel's).
    event = ari("ChannelHangupRequest", cause=32, soft=soft, channel=channel(state="Up"))
    assert translate(event) == e.HangupRequested("1741000000.42", 32, by_system=by_system)


def test_hangup_request_without_a_cause() -> None:
    assert translate(ari("ChannelHangupRequest", channel=channel())) == e.HangupRequested(
        "1741000000.42", 16
    )


def test_channel_destroyed() -> None:
    event = ari("ChannelDestroyed", cause=17, cause_txt="User busy", channel=channel(state="Down"))
    assert translate(event) == e.ChannelHungUp("1741000000.42", 17, "User busy")


def test_channel_destroyed_never_claims_the_channel_was_lost() -> None:
    result = translate(ari("ChannelDestroyed", cause=16, channel=channel()))
    assert isinstance(result, e.ChannelHungUp)
    assert (result.cause_text, result.lost) == ("", False)


def test_stasis_end() -> None:
    assert translate(ari("StasisEnd", channel=channel(state="Up"))) == e.ChannelLeftApp(
        "1741000000.42"
    )


@pytest.mark.parametrize(
    "kind", ["StasisEnd", "ChannelDestroyed", "ChannelHangupRequest", "ChannelDtmfReceived"]
)
def test_channel_events_without_a_channel_are_errors(kind: str) -> None:
    with pytest.raises(AriEventError, match=f"^{kind}: missing channel.id"):
        translate(ari(kind, digit="1"))


@pytest.mark.parametrize(
    "event",
    [
        ari("ChannelVarset", variable="PBX_TENANT", value="acme", channel=channel()),
        ari("ChannelStateChange", channel=channel(state="Up")),
        ari("PlaybackStarted", playback=playback("playing")),
        ari("ApplicationReplaced"),
        {"type": "stasisstart", "args": ["inbound", "1001"], "channel": channel()},
        {"no": "type"},
        {},
    ],
    ids=lambda ev: str(ev.get("type", "none")),
)
def test_events_the_core_does_not_need_are_none(event: dict[str, Any]) -> None:
    assert translate(event) is None


@pytest.mark.parametrize("event", [None, [], "StasisStart", 42, ["type", "StasisEnd"]])
def test_non_objects_are_errors(event: object) -> None:
    with pytest.raises(AriEventError, match="not an object"):
        translate(event)


def test_translation_does_not_change_its_input() -> None:
    event = ari("StasisStart", args=["inbound", "1001"], channel=channel())
    before = copy.deepcopy(event)
    translate(event)
    assert event == before


# -- adoption (GET /channels at start-up) ----------------------------------------------


def test_adopted_call_from_a_channel_snapshot() -> None:
    assert adopted_call(channel(state="Up")) == e.CallAdopted(
        call_id="6f1c2a7e-2f0b-4a53-9d0e-5e6f7a8b9c0d",
        channel_id="1741000000.42",
        did="1001",
        arrived_at=datetime(2025, 3, 3, 8, 0, 0, 123000, tzinfo=UTC),
        caller_number="+48221234567",
    )


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"dialplan": {"app_name": "Stasis", "app_data": "pbx-controller,agent,201"}}, "inbound"),
        ({"dialplan": {"app_name": "Stasis", "app_data": "pbx-controller,inbound,"}}, "inbound"),
        ({"dialplan": {"app_name": "Stasis", "app_data": "pbx-controller"}}, "inbound"),
        ({"dialplan": {}}, "missing dialplan.app_data"),
        ({"creationtime": "yesterday"}, "1741000000.42"),
        ({"creationtime": "2025-03-03T09:00:00.123"}, "1741000000.42"),
        ({"id": ""}, "call_id must not be empty|channel_id must not be empty"),
    ],
)
def test_unadoptable_channels_are_ari_event_errors(overrides: dict[str, Any], problem: str) -> None:
    snapshot = channel(**overrides)
    if overrides.get("id") == "":
        snapshot["channelvars"] = {}
    with pytest.raises(AriEventError, match=problem):
        adopted_call(snapshot)


# -- the contract, fuzzed --------------------------------------------------------------

HANDLED = [
    "StasisStart",
    "PlaybackFinished",
    "ChannelDtmfReceived",
    "ChannelHangupRequest",
    "ChannelDestroyed",
    "StasisEnd",
]
EVENT_FOR = {
    "StasisStart": (e.CallArrived,),
    "PlaybackFinished": (e.PlaybackFinished,),
    "ChannelDtmfReceived": (e.DtmfReceived,),
    "ChannelHangupRequest": (e.HangupRequested,),
    "ChannelDestroyed": (e.ChannelHungUp,),
    "StasisEnd": (e.ChannelLeftApp,),
}

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.sampled_from(["inbound", "agent", "done", "failed", "channel:1.2", "1", "#", "1001"])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
keys = st.sampled_from(
    [
        *("type", "id", "channel", "playback", "args", "digit", "cause", "cause_txt"),
        *("duration_ms", "caller", "number", "name", "channelvars", "PBX_CALL_ID"),
        *("target_uri", "state"),
    ]
)
# Dicts built from the keys ARI uses, so the fuzz reaches past the first lookup.
shaped = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(keys | st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=25,
)
ari_like = st.builds(
    lambda kind, body: {**(body if isinstance(body, dict) else {}), "type": kind},
    st.sampled_from(HANDLED) | json_values,
    shaped,
)
plausible = st.fixed_dictionaries(
    {"type": st.sampled_from(HANDLED)},
    optional={
        "args": st.lists(st.sampled_from(["inbound", "agent", "1001", ""]) | scalars, max_size=3),
        "channel": st.fixed_dictionaries(
            {},
            optional={
                "id": scalars,
                "caller": st.fixed_dictionaries({}, optional={"number": scalars, "name": scalars}),
                "channelvars": st.dictionaries(st.just("PBX_CALL_ID"), scalars) | scalars,
            },
        )
        | scalars,
        "playback": st.fixed_dictionaries(
            {}, optional={"id": scalars, "target_uri": scalars, "state": scalars}
        )
        | scalars,
        "digit": scalars,
        "duration_ms": scalars,
        "cause": scalars,
        "cause_txt": scalars,
    },
)


def check_contract(event: Any) -> None:
    try:
        result = translate(event)
    except AriEventError:
        return
    if result is None:
        return
    assert isinstance(event, dict)
    assert isinstance(result, EVENT_FOR[event["type"]]), (event, result)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_translate_contract_on_any_json(event: Any) -> None:
    check_contract(event)


@settings(max_examples=400, deadline=None)
@given(ari_like | plausible)
def test_translate_contract_on_ari_like_objects(event: dict[str, Any]) -> None:
    check_contract(event)


@settings(max_examples=300, deadline=None)
@given(shaped | st.builds(channel, dialplan=shaped, creationtime=scalars, id=scalars))
def test_adopted_call_contract(snapshot: Any) -> None:
    try:
        result = adopted_call(snapshot)
    except AriEventError:
        return
    assert isinstance(result, e.CallAdopted)
    assert result.arrived_at.utcoffset() is not None


@settings(max_examples=200, deadline=None)
@example(datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))))
@given(
    st.datetimes(
        timezones=st.builds(
            timezone,
            st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timedelta(minutes=m)),
        )
    )
)
def test_adopted_call_contract_on_any_creationtime(created: datetime) -> None:
    # Asterisk's format: milliseconds and a +HHMM offset.
    text = f"{created.year:04d}" + created.strftime("-%m-%dT%H:%M:%S.")
    text += f"{created.microsecond // 1000:03d}" + created.strftime("%z")
    try:
        result = adopted_call(channel(creationtime=text))
    except AriEventError:
        return
    assert result.arrived_at == created.replace(microsecond=created.microsecond // 1000 * 1000)
    assert result.arrived_at.tzinfo is UTC


# -- a call an earlier run left talking ------------------------------------------------------

CALL_ID = "6f1c2a7e-2f0b-4a53-9d0e-5e6f7a8b9c0d"


def agent_leg(**overrides: Any) -> dict[str, Any]:
    dialplan = {
        "context": "pbx-bench-agent",
        "exten": "2001",
        "priority": 1,
        "app_name": "Stasis",
        "app_data": f"pbx-controller,agent,{CALL_ID},ann,sales",
    }
    return channel(
        id=f"{CALL_ID}-leg1",
        dialplan=dialplan,
        creationtime="2025-03-03T09:00:05.500+0100",
        channelvars={},
        **overrides,
    )


def bridge(*members: str, bridge_id: str = f"{CALL_ID}-bridge") -> dict[str, Any]:
    return {
        "id": bridge_id,
        "technology": "simple_bridge",
        "bridge_type": "mixing",
        "bridge_class": "stasis",
        "creator": "Stasis",
        "channels": list(members),
    }


def test_a_bridged_caller_and_agent_leg_are_a_talking_call() -> None:
    caller, leg = channel(state="Up"), agent_leg()
    ours = {caller["id"]: caller, leg["id"]: leg}
    talking = talking_call(bridge(leg["id"], caller["id"]), ours)
    assert talking == TalkingCall(
        caller,
        f"{CALL_ID}-leg1",
        "ann",
        "sales",
        f"{CALL_ID}-bridge",
        datetime(2025, 3, 3, 8, 0, 5, 500000, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    "case",
    ["other bridge name", "caller only", "leg of another call", "leg of an older run", "not ours"],
)
def test_anything_else_in_a_bridge_is_no_talking_call(case: str) -> None:
    caller, leg = channel(state="Up"), agent_leg()
    members = [caller["id"], leg["id"]]
    bridge_id = f"{CALL_ID}-bridge"
    if case == "other bridge name":
        bridge_id = "conference-7"
    elif case == "caller only":
        members = [caller["id"]]
    elif case == "leg of another call":
        leg["dialplan"]["app_data"] = "pbx-controller,agent,other-call,ann,sales"
    elif case == "leg of an older run":
        leg["dialplan"]["app_data"] = f"pbx-controller,agent,{CALL_ID},ann"
    ours = {caller["id"]: caller} if case == "not ours" else {caller["id"]: caller, leg["id"]: leg}
    assert talking_call(bridge(*members, bridge_id=bridge_id), ours) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1795839852.557566", datetime(2026, 11, 28, 4, 24, 12, 557566, tzinfo=UTC)),
        ("", None),  # no CDR kept
        ("0.000000", None),  # not answered
        ("nan", None),
        ("inf", None),
        ("-5", None),
    ],
)
def test_answer_time_from_the_cdr(value: str, expected: datetime | None) -> None:
    assert answer_time(value) == expected


@settings(max_examples=300, deadline=None)
@given(json_values, st.dictionaries(st.text(max_size=8), json_values, max_size=3))
def test_talking_call_never_raises(bridge_json: Any, ours: dict[str, Any]) -> None:
    result = talking_call(bridge_json, ours)
    assert result is None or result.agent_created_at.utcoffset() is not None
