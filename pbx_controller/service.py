"""Wiring: the parts of pbx-controller, started in order and stopped in reverse.

    ARI client (REST + event stream) -> dispatcher (ARI JSON -> core events
    -> engine -> actions -> executor) -> FastAGI server -> AMI client

One inbox takes everything the engine reacts to: ARI events from the
websocket reader and the executor's own events (timers, failed actions).
It handles each at once, in arrival order, one at a time, so the engine
needs no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pbx_controller.asterisk.ami import AmiClient
from pbx_controller.asterisk.ari import (
    AriClient,
    AriError,
    ChannelGone,
    PlaybackGone,
    StreamConnected,
    StreamDisconnected,
)
from pbx_controller.asterisk.events import (
    TRANSLATED,
    AriEventError,
    TalkingCall,
    adopted_call,
    answer_time,
    talking_call,
    translate,
)
from pbx_controller.asterisk.executor import AgentLogSink, CdrSink, Executor, RecordingSink
from pbx_controller.config import Settings
from pbx_controller.core import actions as a
from pbx_controller.core import events as e
from pbx_controller.core.agent import NotAMember, UnknownAgent
from pbx_controller.core.cdr import CdrRecord
from pbx_controller.core.engine import (
    AGENT_ROLE,
    BRIDGE_SUFFIX,
    FALLBACK_CONTEXT,
    Engine,
    NotRecording,
    UnknownCall,
)
from pbx_controller.core.machine import InvalidTransition
from pbx_controller.core.model import Directory
from pbx_controller.core.recording import SNOOP_ROLE
from pbx_controller.recordings.pipeline import RecordingPipeline
from pbx_controller.recordings.storage import RecordingStorage

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Part = Callable[["Controller"], contextlib.AbstractAsyncContextManager[object]]
ORPHAN_GRACE_S = 0.5


class Inbox:
    """ARI events and the executor's events, handled as they are put, in order.

    No queue and no task: the item is handled inside `put_nowait`, which
    saves a task switch per event (measured, A/B in one bench: 0.610 to
    0.587 s of controller CPU per 100 calls). An item put while another is
    being handled (the executor feeding back, say) waits its turn in
    `_items`. A handler may return an awaitable (the resync after a
    connect): everything after it waits until it is done, as ARI events
    must not overtake the resync.
    """

    def __init__(self, handle: Callable[[Any], Awaitable[None] | None]) -> None:
        self._handle = handle
        self._items: deque[Any] = deque()
        self._busy = False
        self._waiting: asyncio.Task[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        if not self._busy:
            self._drain()

    def qsize(self) -> int:
        return len(self._items)

    def _drain(self) -> None:
        self._busy = True
        while self._items:
            item = self._items.popleft()
            try:
                later = self._handle(item)
            except Exception:
                log.exception("controller failed on %r", item)
                continue
            except BaseException:
                self._busy = False  # never leave the inbox stuck
                raise
            if later is not None:
                self._waiting = asyncio.get_running_loop().create_task(self._resume_after(later))
                return  # still busy: what comes meanwhile waits in _items
        self._busy = False

    async def _resume_after(self, work: Awaitable[None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise  # shutting down: nothing more is handled
        except Exception:
            log.exception("controller failed while resyncing")
        self._waiting = None
        self._drain()

    async def close(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._waiting
            self._waiting = None


@dataclass(frozen=True, slots=True)
class _OrphanCandidates:
    """Channels found in our app at start-up, before this run saw them."""

    channels: tuple[dict[str, Any], ...]


Observer = Callable[[e.Event, list[a.Action]], None]


# What the engine refuses an agent or ops request with -> the result code;
# checked in order (several are ValueErrors).
Refusals = tuple[tuple[type[Exception] | tuple[type[Exception], ...], str], ...]
AGENT_REFUSALS: Refusals = (
    (UnknownAgent, "UNKNOWN_AGENT"),
    ((InvalidTransition, NotAMember), "INVALID_STATE"),
    (ValueError, "BAD_REQUEST"),
)
CALL_REFUSALS: Refusals = ((UnknownCall, "UNKNOWN_CALL"), (NotRecording, "NOT_RECORDING"))


def utc_now() -> datetime:
    return datetime.now(UTC)


class LoggingCdrSink:
    """Keeps CDRs in memory and logs them (the demo, and until the store is wired)."""

    def __init__(self) -> None:
        self.records: list[CdrRecord] = []

    def write(self, cdr: CdrRecord) -> None:
        self.records.append(cdr)
        log.info(
            "CDR %s tenant=%s did=%s disposition=%s",
            cdr.call_id,
            cdr.tenant_id,
            cdr.did,
            cdr.disposition.value,
        )


class ReloadRefused(Exception):
    """A live reload that was not applied; the message says why."""


class Controller:
    def __init__(
        self,
        settings: Settings,
        directory: Directory,
        cdrs: CdrSink,
        *,
        clock: Clock = utc_now,
        parts: Sequence[Part] | None = None,
        agent_log: AgentLogSink | None = None,
        recordings: RecordingSink | None = None,
        restored: Sequence[e.AgentRestored] = (),
        load_directory: Callable[[], Awaitable[Directory]] | None = None,
    ) -> None:
        self.settings = settings
        # Where a live reload reads the configuration from (the database).
        self.load_directory = load_directory
        # Agents an earlier run left logged in: back before the first call.
        self.restored = tuple(restored)
        self.engine = Engine(directory)
        self.clock = clock
        self.inbox = Inbox(self._take)
        self.ari = AriClient(
            settings.ari.url,
            settings.ari.username,
            settings.ari.password.get_secret_value(),
            settings.ari.app,
            heartbeat_s=settings.ari.heartbeat_s,
            reconnect_max_s=settings.ari.reconnect_max_s,
            request_timeout_s=settings.ari.request_timeout_s,
            events=self.inbox,
            rest_over_websocket=settings.ari.rest_over_websocket,
        )
        if recordings is None:
            recordings = RecordingPipeline(
                RecordingStorage(settings.recordings_dir()), settings.recordings.spool_dir
            )
        self.recordings = recordings
        self.executor = Executor(self.ari, self.feed, cdrs, agent_log, recordings)
        self.observers: list[Observer] = []
        self.reconnects = 0
        self._task: asyncio.Task[None] | None = None
        # More parts (the FastAGI server, the AMI client) start after ARI is
        # connected, in this order, and stop in reverse.
        if parts is None:
            from pbx_controller.parts import DEFAULT_PARTS

            parts = DEFAULT_PARTS
        self.parts: list[Part] = list(parts)
        self.ami: AmiClient | None = None
        # Channels whose StasisStart this run has seen (bounded: only needed
        # for the orphan sweep right after start-up).
        self._seen_channels: deque[str] = deque(maxlen=10_000)

    # -- life cycle -----------------------------------------------------------------

    async def run(
        self, ready: asyncio.Event | None = None, *, connect_timeout_s: float = 10.0
    ) -> None:
        """Run until cancelled. The parts start in order under one TaskGroup;
        on cancellation the exit stack closes them in reverse order."""
        for bind in self.settings.non_loopback_binds():
            log.warning("listening off loopback: %s", bind)
        self._restore_agents()
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self.ari.close)
            stack.push_async_callback(self._finish_actions)
            # After the inbox: no event changes an agent once they are out.
            stack.callback(self._log_agents_out)
            stack.push_async_callback(self.inbox.close)
            async with asyncio.TaskGroup() as group:
                group.create_task(self.ari.run_events(), name="ari-events")
                try:
                    async with asyncio.timeout(connect_timeout_s):
                        await self.ari.connected.wait()
                except TimeoutError:
                    raise AriError(
                        f"ARI at {self.settings.ari.url} did not accept the event "
                        f"websocket within {connect_timeout_s:.0f}s"
                    ) from None
                for part in self.parts:
                    await stack.enter_async_context(part(self))
                log.info(
                    "pbx-controller ready: app %s on %s",
                    self.settings.ari.app,
                    self.settings.ari.url,
                )
                if ready is not None:
                    ready.set()
                await asyncio.Event().wait()  # until cancelled

    def _restore_agents(self) -> None:
        for event in self.restored:
            self._handle(event)
        if self.restored:
            paused = sum(1 for event in self.restored if event.paused_reason is not None)
            log.info(
                "%d agent(s) back as the last run left them (%d paused)",
                len(self.restored),
                paused,
            )

    def _log_agents_out(self) -> None:
        """Stopping: every logged-in agent is logged out (the log says why,
        so the next run can put them back; see core.agent.restoration)."""
        self._handle(e.ControllerStopping())

    async def _finish_actions(self) -> None:
        # Requests already on their way (a Hangup, a CDR write) are finished,
        # within reason; timers die with the process.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self.executor.drain()
        self.executor.close()

    async def start(self) -> None:
        """Run in the background (tests, the demo); returns once ready."""
        ready = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self.run(ready), name="controller")
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.is_set():
            waiter.cancel()
            await self._task  # raises what made start-up fail

    async def stop(self) -> None:
        if self._task is not None:
            await self.stop_task(self._task)
            self._task = None

    @staticmethod
    async def stop_task(task: asyncio.Task[None]) -> None:
        """Cancel a running `run()` and wait for its orderly shutdown; a
        failure that ended it early is raised here."""
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def __aenter__(self) -> Controller:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the loop ----------------------------------------------------------------------

    def feed(self, event: e.Event) -> None:
        """Queue an event from inside the process (timers, failed actions)."""
        self.inbox.put_nowait(event)

    def _take(self, item: Any) -> Awaitable[None] | None:
        """The inbox's handler: an ARI event dict, a core event, or a marker."""
        if isinstance(item, dict):
            self._on_ari_event(item)
        elif isinstance(item, StreamConnected):
            return self._adopt_or_resync(item.reconnect)
        elif isinstance(item, _OrphanCandidates):
            self._release_orphans(item)
        elif not isinstance(item, StreamDisconnected):
            self._handle(item)
        return None

    def _on_ari_event(self, raw: dict[str, Any]) -> None:
        channel = raw.get("channel")
        channel_id = channel.get("id") if isinstance(channel, dict) else None
        if raw.get("type") == "StasisStart" and isinstance(channel_id, str):
            self._seen_channels.append(channel_id)
        try:
            event = translate(raw)
        except AriEventError as exc:
            log.error("unreadable ARI event: %s", exc)
            # A caller we cannot read goes to the fallback, not into silence.
            if raw.get("type") == "StasisStart" and isinstance(channel_id, str):
                self.executor.submit([a.ContinueInDialplan(channel_id, FALLBACK_CONTEXT)])
            return
        if event is not None:
            self._handle(event)

    async def reload_configuration(self) -> Directory:
        """Read the configuration again and apply it live (SIGHUP, `pbxctl
        config reload`): no call is dropped, no agent logged out. Raises
        ReloadRefused, saying why, with nothing changed."""
        if self.load_directory is None:
            raise ReloadRefused("this controller has no configuration store to reload from")
        try:
            directory = await self.load_directory()
        except Exception as exc:
            raise ReloadRefused(f"configuration unreadable: {type(exc).__name__}: {exc}") from None
        try:
            actions = self.engine.reload(directory, self.clock())
        except ValueError as exc:
            raise ReloadRefused(str(exc)) from None
        self.executor.submit(actions)
        log.info(
            "configuration reloaded: %d tenants, %d DIDs, %d queues, %d agents",
            len(directory.tenants),
            len(directory.dids),
            len(directory.queues),
            len(directory.agents),
        )
        return directory

    def agent_command(self, agent_id: str, command: str, reason: str = "") -> str:
        """Log in, log out, pause, unpause or end wrap-up for an agent, now.
        Returns the result code the feature code and the API report:
        OK, UNKNOWN_AGENT, INVALID_STATE or BAD_REQUEST."""
        try:
            event = e.AgentCommand(agent_id, command, reason)
        except ValueError:
            return "BAD_REQUEST"
        return self._command(event, AGENT_REFUSALS)

    def call_command(self, tenant_id: str, call_id: str, command: str) -> str:
        """Stop, pause or resume a live call's recording, now. Returns OK,
        UNKNOWN_CALL (none for this tenant), NOT_RECORDING or BAD_REQUEST."""
        try:
            event = e.CallCommand(tenant_id, call_id, command)
        except ValueError:
            return "BAD_REQUEST"
        return self._command(event, CALL_REFUSALS)

    def _command(self, event: e.Event, refusals: Refusals) -> str:
        """A request the engine may refuse: its refusal becomes a result code
        (the first match in `refusals`), anything else is a bug and raises."""
        try:
            actions = self.engine.handle(event, self.clock())
        except Exception as exc:
            for kinds, code in refusals:
                if isinstance(exc, kinds):
                    return code
            raise
        for observer in self.observers:
            observer(event, actions)
        self.executor.submit(actions)
        return "OK"

    def _handle(self, event: e.Event) -> None:
        try:
            actions = self.engine.handle(event, self.clock())
        except Exception:
            # The wazo rule: a failing handler hands the caller back to the
            # dialplan, never leaves them in silence.
            log.exception("engine failed on %r", event)
            channel_id = getattr(event, "channel_id", "")
            actions = [a.ContinueInDialplan(channel_id, FALLBACK_CONTEXT)] if channel_id else []
        for observer in self.observers:
            observer(event, actions)
        self.executor.submit(actions)

    async def _adopt_or_resync(self, reconnect: bool) -> None:
        """After a reconnect, learn what happened while we were away: calls
        that hung up and playbacks that finished. On first connect, hand
        back to the dialplan any channel left in our app by an earlier run
        (it cannot be resumed safely yet, and must not sit in silence)."""
        if reconnect:
            self.reconnects += 1
        await self.ari.check_rest_over_websocket()
        await self._filter_events()
        known = set(self.engine.channel_ids())
        try:
            for channel_id in list(known):
                try:
                    await self.ari.get_channel(channel_id)
                except ChannelGone:
                    self._handle(
                        e.ChannelHungUp(channel_id, 16, "gone during reconnect", lost=True)
                    )
            for playback_id in self.engine.playback_ids():
                try:
                    await self.ari.get_playback(playback_id)
                except PlaybackGone:
                    self._handle(e.PlaybackFinished(playback_id, ""))
            if not reconnect:
                listed = [c for c in await self.ari.list_channels() if self._in_our_app(c)]
                # Before any later event is handled (the inbox waits for us):
                # no new caller is offered to an agent who is still talking.
                await self._adopt_talking_calls(listed)
                # A call that entered the app just now has its StasisStart
                # queued behind us: decide after it had time to be handled.
                asyncio.get_running_loop().call_later(
                    ORPHAN_GRACE_S, self.inbox.put_nowait, _OrphanCandidates(tuple(listed))
                )
        except AriError as exc:
            log.error("resync after connect failed: %s", exc)

    async def _filter_events(self) -> None:
        """Ask Asterisk for the event types the core reads, nothing else
        (a third of them): less JSON for Asterisk to build and for us to
        parse. Without it (an error), everything still works."""
        try:
            await self.ari.request(
                "PUT",
                f"/applications/{self.ari.app}/eventFilter",
                # RESTResponse too: the filter applies to every message of the
                # websocket, the answers to REST requests sent over it as well.
                body={
                    "allowed": [{"type": kind} for kind in [*sorted(TRANSLATED), "RESTResponse"]]
                },
            )
        except AriError as exc:
            log.warning("ARI event filter not set (all events will come): %s", exc)

    async def _adopt_talking_calls(self, listed: list[dict[str, Any]]) -> None:
        """Calls an earlier run left bridged with their agent go on: the
        engine takes them over as they are, and bills their whole talk
        (answered when Asterisk's CDR says). Any other call bridge an
        earlier run left (empty, or half a call) is destroyed."""
        ours = {c["id"]: c for c in listed}
        try:
            bridges = await self.ari.list_bridges()
        except AriError as exc:
            # The orphan sweep must still run: its callers go to the fallback.
            log.error("cannot list bridges, no call is adopted as talking: %s", exc)
            return
        for bridge in bridges:
            talking = talking_call(bridge, ours)
            if talking is not None and await self._adopt_talking(talking):
                continue
            if _stale_call_bridge(bridge, ours):
                log.warning("bridge %s left by an earlier run; destroying it", bridge["id"])
                self.executor.submit([a.DestroyBridge(bridge["id"])])

    async def _adopt_talking(self, talking: TalkingCall) -> bool:
        answered_at = await self._answer_time(talking)
        link = e.AdoptedConnection(
            talking.agent_channel_id,
            talking.agent_id,
            talking.queue_id,
            talking.bridge_id,
            answered_at,
        )
        try:
            event = adopted_call(talking.caller, link)
        except AriEventError as exc:
            log.error("cannot adopt the call in bridge %s: %s", talking.bridge_id, exc)
            return False
        self._seen_channels.append(event.channel_id)
        self._handle(event)
        call = self.engine.calls.get(event.call_id)
        if call is None or call.agent_channel != talking.agent_channel_id:
            # The engine sent the caller to the fallback (agent or queue
            # configured away): the agent's leg goes, as any orphan's.
            log.warning("call %s left talking by an earlier run cannot go on", event.call_id)
            self.executor.submit([a.Hangup(talking.agent_channel_id)])
            return False
        log.warning(
            "call %s (agent %s) was left talking by an earlier run; it goes on",
            event.call_id,
            talking.agent_id,
        )
        self._seen_channels.append(talking.agent_channel_id)
        return True

    async def _answer_time(self, talking: TalkingCall) -> datetime:
        try:
            value = await self.ari.get_variable(talking.agent_channel_id, "CDR(answer,u)")
        except AriError:
            value = ""
        answered_at = answer_time(value)
        if answered_at is None:
            # No CDR kept (cdr.conf): the leg's creation, a few seconds of
            # ringing early, is the nearest time Asterisk still knows.
            log.warning(
                "call in bridge %s: answer time unknown (Asterisk keeps no CDR); "
                "billing from its agent leg's creation",
                talking.bridge_id,
            )
            answered_at = talking.agent_created_at
        return answered_at

    def _release_orphans(self, candidates: _OrphanCandidates) -> None:
        for channel in candidates.channels:
            if channel["id"] in self._seen_channels:
                continue
            role = _stasis_role(channel)
            if role in (SNOOP_ROLE, AGENT_ROLE):
                # A recording leg of a call the earlier run lost: stop it
                # (hanging up the snoop ends its recording); never resume one.
                # An agent's leg: its caller goes to the fallback, the agent
                # is hung up (the fallback's words are for callers).
                log.warning(
                    "%s channel %s left by an earlier run; hanging it up", role, channel["id"]
                )
                self.executor.submit([a.Hangup(channel["id"])])
                continue
            log.warning(
                "channel %s was left in the app by an earlier run; adopting it", channel["id"]
            )
            try:
                event = adopted_call(channel)
            except AriEventError as exc:
                log.error(
                    "cannot adopt channel %s (%s); sending it to the fallback", channel["id"], exc
                )
                self.executor.submit([a.ContinueInDialplan(channel["id"], FALLBACK_CONTEXT)])
                continue
            self._seen_channels.append(channel["id"])
            self._handle(event)

    def _in_our_app(self, channel: dict[str, Any]) -> bool:
        dialplan = channel.get("dialplan") or {}
        data = str(dialplan.get("app_data", ""))
        return dialplan.get("app_name") == "Stasis" and data.split(",", 1)[0] == self.ari.app


def _stale_call_bridge(bridge: dict[str, Any], ours: dict[str, Any]) -> bool:
    """A call bridge (the engine's naming) of an earlier run that nothing
    goes on in: empty, or holding only channels of our app."""
    bridge_id, members = bridge.get("id"), bridge.get("channels")
    return (
        isinstance(bridge_id, str)
        and bridge_id.endswith(BRIDGE_SUFFIX)
        and bridge.get("bridge_class") == "stasis"
        and isinstance(members, list)
        and all(member in ours for member in members)
    )


def _stasis_role(channel: dict[str, Any]) -> str:
    """The role our Stasis() arguments gave a channel: inbound, agent, snoop."""
    data = str((channel.get("dialplan") or {}).get("app_data", "")).split(",")
    return data[1] if len(data) > 1 else ""


async def _reload_on_signal(controller: Controller) -> None:
    log.info("SIGHUP: reloading the configuration")
    try:
        await controller.reload_configuration()
    except ReloadRefused as exc:
        log.error("configuration not reloaded: %s", exc)


def freeze_startup_heap() -> None:
    """Take what start-up allocated (modules, ORM metadata, the directory)
    out of the cyclic collector's reach: it lives as long as the process, and
    every full collection would walk all of it again. Call once, when
    start-up is over."""
    gc.collect()
    gc.freeze()


async def serve(
    settings: Settings,
    directory: Directory,
    cdrs: CdrSink,
    agent_log: AgentLogSink | None = None,
    recordings: RecordingSink | None = None,
    restored: Sequence[e.AgentRestored] = (),
    load_directory: Callable[[], Awaitable[Directory]] | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then shut down in reverse order. SIGHUP
    reloads the configuration (`load_directory`) live."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    controller = Controller(
        settings,
        directory,
        cdrs,
        agent_log=agent_log,
        recordings=recordings,
        restored=restored,
        load_directory=load_directory,
    )
    reloads: set[asyncio.Task[None]] = set()

    def reload() -> None:
        task = loop.create_task(_reload_on_signal(controller))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    freeze_startup_heap()
    run = asyncio.create_task(controller.run(), name="controller")
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({run, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        log.info("shutting down")
    await controller.stop_task(run)
    stopping.cancel()
