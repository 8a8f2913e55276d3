"""ARI JSON -> core events, in one place.

Contract: `translate()` either returns a core event, returns None for an
event the core does not need, or raises `AriEventError`. Never anything
else, whatever the JSON (a fuzz test holds it to that).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pbx_controller.core import events as e
from pbx_controller.core.engine import BRIDGE_SUFFIX


class AriEventError(ValueError):
    """An ARI event we need but cannot read."""


def _str(obj: Any, *path: str) -> str:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            raise AriEventError(f"missing {'.'.join(path)}")
        obj = obj[key]
    if not isinstance(obj, str | int):
        raise AriEventError(f"{'.'.join(path)} is not a string")
    return str(obj)


def _opt(obj: Any, *path: str) -> str:
    try:
        return _str(obj, *path)
    except AriEventError:
        return ""


def translate(event: Any) -> e.Event | None:
    if not isinstance(event, dict):
        raise AriEventError(f"event is not an object: {type(event).__name__}")
    kind = event.get("type")
    reader = _READERS.get(kind) if isinstance(kind, str) else None
    if reader is None:
        return None  # not an event the core needs
    try:
        return reader(event)
    except ValueError as exc:  # includes AriEventError and core validation
        raise AriEventError(f"{kind}: {exc}") from exc


def _playback_finished(event: dict[str, Any]) -> e.Event:
    target = _str(event, "playback", "target_uri")
    channel_id = target.removeprefix("channel:") if target.startswith("channel:") else ""
    completed = _opt(event, "playback", "state") == "done"
    return e.PlaybackFinished(_str(event, "playback", "id"), channel_id, completed)


def _dtmf_received(event: dict[str, Any]) -> e.Event:
    duration = event.get("duration_ms", 0)
    return e.DtmfReceived(
        _str(event, "channel", "id"),
        _str(event, "digit"),
        duration if isinstance(duration, int) else 0,
    )


def _cause(event: dict[str, Any]) -> int:
    cause = event.get("cause", 16)
    return cause if isinstance(cause, int) else 16


def _hangup_request(event: dict[str, Any]) -> e.Event:
    # "soft" is set for a hang-up Asterisk was asked for (CLI, ARI, shutdown);
    # a far end's BYE is queued without it.
    return e.HangupRequested(
        _str(event, "channel", "id"), _cause(event), by_system=event.get("soft") is True
    )


def _channel_destroyed(event: dict[str, Any]) -> e.Event:
    return e.ChannelHungUp(_str(event, "channel", "id"), _cause(event), _opt(event, "cause_txt"))


def _stasis_end(event: dict[str, Any]) -> e.Event:
    # With subscribeAll=false, StasisEnd is the last event of a channel:
    # ChannelDestroyed does not reach us once it left.
    return e.ChannelLeftApp(_str(event, "channel", "id"))


def _recording_started(event: dict[str, Any]) -> e.Event:
    return e.RecordingStarted(_str(event, "recording", "name"))


def _recording_finished(event: dict[str, Any]) -> e.Event:
    failed = event.get("type") == "RecordingFailed" or (
        _opt(event, "recording", "state") == "failed"
    )
    cause = _opt(event, "recording", "cause")
    return e.RecordingFinished(_str(event, "recording", "name"), failed, cause)


def _stasis_start(event: dict[str, Any]) -> e.Event | None:
    args = event.get("args")
    if not isinstance(args, list) or not args:
        raise AriEventError("StasisStart without app arguments")
    role = args[0]
    if role == "inbound":
        if len(args) < 2 or not isinstance(args[1], str) or not args[1]:
            raise AriEventError("inbound StasisStart without a DID")
        channel_id = _str(event, "channel", "id")
        # The dialplan gives the call its id (PBX_CALL_ID); fall back to the
        # channel id for channels sent to Stasis by other paths.
        call_id = _opt(event, "channel", "channelvars", "PBX_CALL_ID") or channel_id
        return e.CallArrived(
            call_id=call_id,
            channel_id=channel_id,
            did=args[1],
            caller_number=_opt(event, "channel", "caller", "number"),
            caller_name=_opt(event, "channel", "caller", "name"),
            answered=_opt(event, "channel", "state") == "Up",
        )
    if role == "agent":
        if len(args) < 3 or not all(isinstance(x, str) and x for x in args[1:3]):
            raise AriEventError("agent StasisStart without call id and agent id")
        return e.AgentLegAnswered(_str(event, "channel", "id"), args[1], args[2])
    return None


# ARI event type -> its reader. TRANSLATED, the types the controller asks
# Asterisk for (an application event filter), is this table's keys: a type
# read here is asked for, and only those.
_READERS: dict[str, Callable[[dict[str, Any]], e.Event | None]] = {
    "StasisStart": _stasis_start,
    "StasisEnd": _stasis_end,
    "PlaybackFinished": _playback_finished,
    "ChannelDtmfReceived": _dtmf_received,
    "ChannelHangupRequest": _hangup_request,
    "ChannelDestroyed": _channel_destroyed,
    "RecordingStarted": _recording_started,
    "RecordingFinished": _recording_finished,
    "RecordingFailed": _recording_finished,
}
TRANSLATED = frozenset(_READERS)


def stasis_role(event: Any) -> str:
    """The first app argument of a StasisStart ('' when absent)."""
    args = event.get("args") if isinstance(event, dict) else None
    return args[0] if isinstance(args, list) and args and isinstance(args[0], str) else ""


def adopted_call(channel: Any, connected: e.AdoptedConnection | None = None) -> e.CallAdopted:
    """A channel found in our app at start-up (from `GET /channels`), as a
    core event. Its DID is the Stasis() argument the dialplan gave it."""
    data = _str(channel, "dialplan", "app_data").split(",")
    if len(data) < 3 or data[1] != "inbound" or not data[2]:
        raise AriEventError(f"not an inbound call: Stasis({','.join(data)})")
    channel_id = _str(channel, "id")
    try:
        return e.CallAdopted(
            call_id=_call_id(channel),
            channel_id=channel_id,
            did=data[2],
            arrived_at=_created(channel),
            caller_number=_opt(channel, "caller", "number"),
            connected=connected,
        )
    except (ValueError, OverflowError) as exc:
        raise AriEventError(f"channel {channel_id}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class TalkingCall:
    """A caller and its agent still bridged in our app at start-up."""

    caller: dict[str, Any]  # the caller's channel, as `GET /channels` lists it
    agent_channel_id: str
    agent_id: str
    queue_id: str
    bridge_id: str
    agent_created_at: datetime


def talking_call(bridge: Any, ours: Mapping[str, Any]) -> TalkingCall | None:
    """The call a bridge from `GET /bridges` holds, when it is one of ours
    still talking: its caller (role inbound) and the agent leg offered for
    that very call (role agent, with the queue the offer came from), both in
    our app (`ours`: channel id -> channel). None for anything else."""
    if not isinstance(bridge, dict):
        return None
    bridge_id, members = bridge.get("id"), bridge.get("channels")
    if not isinstance(bridge_id, str) or not bridge_id.endswith(BRIDGE_SUFFIX):
        return None
    if not isinstance(members, list) or len(members) != 2:
        return None
    # Stasis(app,<role>,...) -> the channel and its app arguments
    roles: dict[str, tuple[Any, list[str]]] = {}
    for member in members:
        channel = ours.get(member) if isinstance(member, str) else None
        app_args = _opt(channel, "dialplan", "app_data").split(",")
        if channel is not None and len(app_args) > 1:
            roles[app_args[1]] = (channel, app_args)
    if "inbound" not in roles or "agent" not in roles:
        return None
    caller, agent, args = roles["inbound"][0], *roles["agent"]
    call_id = bridge_id.removesuffix(BRIDGE_SUFFIX)
    if len(args) < 5 or args[2] != call_id or not args[3] or not args[4]:
        return None  # another call's leg, or one without its queue (an older run)
    try:
        if _call_id(caller) != call_id:
            return None
        return TalkingCall(caller, _str(agent, "id"), args[3], args[4], bridge_id, _created(agent))
    except (ValueError, OverflowError):  # AriEventError included
        return None


def answer_time(value: str) -> datetime | None:
    """`CDR(answer,u)` (epoch seconds): when a channel was answered; None
    when Asterisk keeps no CDR for it (empty, or 0 when not answered)."""
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not (math.isfinite(seconds) and seconds > 0):
        return None
    return datetime.fromtimestamp(seconds, UTC)


def _call_id(channel: Any) -> str:
    return _opt(channel, "channelvars", "PBX_CALL_ID") or _str(channel, "id")


def _created(channel: Any) -> datetime:
    created = datetime.strptime(_str(channel, "creationtime"), "%Y-%m-%dT%H:%M:%S.%f%z")
    return created.astimezone(UTC)
