"""A thin ARI client on aiohttp: REST verbs with typed errors, and an event
stream that reconnects.

Why our own: measured, the published Python ARI libraries either do not
import on Python 3, freeze the loop, or lose live calls when the websocket
drops (ASTERISK_NOTES.md).

The event reader does nothing but decode JSON and `put_nowait` onto an
unbounded queue: Asterisk cuts off a websocket reader that falls 100 ms
behind, so nothing slow may ever run on the reader.

REST over the websocket (Asterisk 20.14/21.9/22.4 and later) can be
pipelined: Asterisk carries out the requests of one websocket one after
another, in the order they came (res/ari/ari_websockets.c reads a request
and answers it before it reads the next). So `send` puts a request on the
wire without waiting for the one before, and its answer goes to a callback
from the reader: no task, no future, no timer per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import orjson

from pbx_controller.backoff import backoff_s

log = logging.getLogger(__name__)

Json = dict[str, Any]


# -- errors ------------------------------------------------------------------


class AriError(Exception):
    """ARI answered with an error status, or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, path: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.path = path


class AriUnavailable(AriError):
    """No answer: Asterisk is down, restarting, or the network failed."""


class AriNotFound(AriError):
    """404: the resource does not exist (any more)."""


class ChannelGone(AriNotFound):
    """404 on a channel: it hung up already. Usually a race, not a bug."""


class BridgeGone(AriNotFound):
    """404 on a bridge."""


class PlaybackGone(AriNotFound):
    """404 on a playback: it finished already."""


class AriConflict(AriError):
    """409: e.g. the channel is not in our Stasis app, or not answered."""


class AriBadRequest(AriError):
    """400/422: we sent something Asterisk rejects. A bug on our side."""


class AriAuthError(AriError):
    """401/403: wrong ARI credentials."""


class AriServerError(AriError):
    """5xx from Asterisk."""


def _error_for(status: int, path: str, text: str) -> AriError:
    message = f"ARI {status} on {path}: {text.strip()[:200]}"
    if status == 404:
        if path.startswith("/channels/"):
            return ChannelGone(message, status=status, path=path)
        if path.startswith("/bridges/"):
            return BridgeGone(message, status=status, path=path)
        if path.startswith("/playbacks/"):
            return PlaybackGone(message, status=status, path=path)
        return AriNotFound(message, status=status, path=path)
    if status == 409:
        return AriConflict(message, status=status, path=path)
    if status in (400, 422):
        return AriBadRequest(message, status=status, path=path)
    if status in (401, 403):
        return AriAuthError(
            f"ARI {status} on {path}: check the ARI username and password", status=status, path=path
        )
    return AriServerError(message, status=status, path=path)


# -- requests ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestCall:
    """One ARI request, built apart from its sending: awaited (`call`) or
    pipelined over the websocket (`send`)."""

    method: str
    path: str
    params: Mapping[str, str | int] | None = None
    body: Json | None = None


# What a request sent over the websocket hears back: Asterisk's RESTResponse,
# or the AriUnavailable that ended the wait (timeout, connection lost).
Answer = Callable[[Json | AriError], None]
# What a pipelined request's sender hears: None (done) or the error.
Done = Callable[[AriError | None], None]


@dataclass(frozen=True, slots=True)
class _Pending:
    call: RestCall
    deadline: float  # loop time
    answer: Answer


def _checked_body(call: RestCall, response: Json) -> str:
    """A RESTResponse's body, or the typed error its status says."""
    status = response.get("status_code")
    text = response.get("message_body") or ""
    if not isinstance(status, int) or not isinstance(text, str):
        raise AriUnavailable(
            f"ARI {call.method} {call.path}: malformed RESTResponse", path=call.path
        )
    if status >= 400:
        raise _error_for(status, call.path, text)
    return text


class Rest:
    """The requests the controller makes, by name (paths and parameters in
    one place, whether they are awaited or pipelined)."""

    @staticmethod
    def answer(channel_id: str) -> RestCall:
        return RestCall("POST", f"/channels/{_p(channel_id)}/answer")

    @staticmethod
    def hangup(channel_id: str, reason: str = "normal") -> RestCall:
        return RestCall("DELETE", f"/channels/{_p(channel_id)}", {"reason": reason})

    @staticmethod
    def continue_in_dialplan(
        channel_id: str, context: str, extension: str = "s", priority: int = 1
    ) -> RestCall:
        return RestCall(
            "POST",
            f"/channels/{_p(channel_id)}/continue",
            {"context": context, "extension": extension, "priority": priority},
        )

    @staticmethod
    def play(channel_id: str, playback_id: str, media: Iterable[str]) -> RestCall:
        return RestCall(
            "POST", f"/channels/{_p(channel_id)}/play/{_p(playback_id)}", {"media": ",".join(media)}
        )

    @staticmethod
    def stop_playback(playback_id: str) -> RestCall:
        return RestCall("DELETE", f"/playbacks/{_p(playback_id)}")

    @staticmethod
    def originate(
        app: str,
        endpoint: str,
        *,
        channel_id: str,
        app_args: str = "",
        other_channel_id: str | None = None,
        caller_id: str | None = None,
        timeout_s: int = 30,
        variables: Mapping[str, str] | None = None,
        originator: str | None = None,
    ) -> RestCall:
        params: dict[str, str | int] = {
            "endpoint": endpoint,
            "app": app,
            "appArgs": app_args,
            "timeout": timeout_s,
        }
        if other_channel_id:
            params["otherChannelId"] = other_channel_id
        if caller_id:
            params["callerId"] = caller_id
        if originator:
            params["originator"] = originator
        body = {"variables": dict(variables)} if variables else None
        return RestCall("POST", f"/channels/{_p(channel_id)}", params, body)

    @staticmethod
    def start_moh(channel_id: str, moh_class: str = "default") -> RestCall:
        return RestCall("POST", f"/channels/{_p(channel_id)}/moh", {"mohClass": moh_class})

    @staticmethod
    def stop_moh(channel_id: str) -> RestCall:
        return RestCall("DELETE", f"/channels/{_p(channel_id)}/moh")

    @staticmethod
    def create_bridge(bridge_id: str, bridge_type: str = "mixing") -> RestCall:
        return RestCall("POST", f"/bridges/{_p(bridge_id)}", {"type": bridge_type})

    @staticmethod
    def add_to_bridge(bridge_id: str, channel_ids: Iterable[str]) -> RestCall:
        # One request for several channels: `channel=a,b`.
        return RestCall(
            "POST", f"/bridges/{_p(bridge_id)}/addChannel", {"channel": ",".join(channel_ids)}
        )

    @staticmethod
    def destroy_bridge(bridge_id: str) -> RestCall:
        return RestCall("DELETE", f"/bridges/{_p(bridge_id)}")

    @staticmethod
    def pause_recording(name: str) -> RestCall:
        return RestCall("POST", f"/recordings/live/{_p(name)}/pause")

    @staticmethod
    def unpause_recording(name: str) -> RestCall:
        return RestCall("DELETE", f"/recordings/live/{_p(name)}/pause")


# -- event stream markers ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamConnected:
    """Put on the event queue each time the websocket (re)connects. After a
    reconnect the consumer must resync: events may have been missed."""

    reconnect: bool


@dataclass(frozen=True, slots=True)
class StreamDisconnected:
    reason: str


class EventSink(Protocol):
    """Where the websocket reader puts what it receives (an asyncio.Queue will do)."""

    def put_nowait(self, item: Any) -> None: ...


# -- the client ------------------------------------------------------------------


class AriClient:
    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        app: str,
        *,
        heartbeat_s: float = 5.0,
        reconnect_max_s: float = 5.0,
        request_timeout_s: float = 5.0,
        events: EventSink | None = None,
        rest_over_websocket: bool = False,
    ) -> None:
        self.base_url = url.rstrip("/")
        self.app = app
        # Only the encoded header is kept, never the password itself.
        self._headers = {"Authorization": aiohttp.encode_basic_auth(username, password)}
        self._heartbeat = heartbeat_s
        self._reconnect_max = reconnect_max_s
        self._request_timeout_s = request_timeout_s
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        # Items: ARI event dicts, StreamConnected, StreamDisconnected. The
        # service passes its inbox, which handles each at once; by default
        # they queue up for whoever awaits them.
        self.events: EventSink = events if events is not None else asyncio.Queue()
        self.connected = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._closing = False
        # REST over the websocket: requests waiting for their RESTResponse.
        self.rest_over_websocket = rest_over_websocket
        # Sent (or queued to be) and not answered yet, in the order sent.
        self._pending: dict[str, _Pending] = {}
        self._request_ids = itertools.count(1)
        # Frames for the websocket, written in order by one sender task.
        self._outgoing: deque[bytes] = deque()  # UTF-8 JSON, sent as text frames
        self._wake_sender = asyncio.Event()
        # One sweep for the timeouts of all pending requests, not a timer each.
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_every_s = min(1.0, max(0.05, request_timeout_s / 5))
        # Counters for /metrics (and the bench's per-call traffic figures).
        self.requests_sent = 0
        self.events_received = 0
        # Websockets Asterisk accepted without (or later dropped) our app.
        self.deaf_connections = 0

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Keep-alive connections: a call costs several REST requests.
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30),
            )
        return self._session

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AriClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- REST -------------------------------------------------------------------

    @property
    def pipelining(self) -> bool:
        """REST goes over the websocket now: `send` may be used."""
        ws = self._ws
        return self.rest_over_websocket and ws is not None and not ws.closed

    def send(self, call: RestCall, done: Done) -> bool:
        """Pipelined: put the request on the websocket behind those sent
        before it, without waiting for their answers; `done` gets its outcome
        (None, or the AriError) from the reader. False, and nothing sent,
        when REST cannot go over the websocket now: then use `call`."""
        if not self.pipelining:
            return False
        self.requests_sent += 1

        def answer(response: Json | AriError) -> None:
            if isinstance(response, AriError):
                done(response)
                return
            try:
                _checked_body(call, response)
            except AriError as exc:
                done(exc)
                return
            done(None)

        self._submit(call, answer)
        return True

    async def call(self, call: RestCall, *, parse: bool = True) -> Any:
        return await self.request(call.method, call.path, call.params, call.body, parse=parse)

    async def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str | int] | None = None,
        body: Json | None = None,
        *,
        parse: bool = True,
    ) -> Any:
        """The answer's JSON body, or None (no body, or `parse` is false)."""
        self.requests_sent += 1
        if self.pipelining:
            return await self._request_over_websocket(RestCall(method, path, params, body), parse)
        return await self._request_over_http(method, path, params, body, parse=parse)

    async def _request_over_http(
        self,
        method: str,
        path: str,
        params: Mapping[str, str | int] | None = None,
        body: Json | None = None,
        *,
        parse: bool = True,
    ) -> Any:
        query = {k: str(v) for k, v in (params or {}).items()}
        try:
            async with self.session.request(
                method, self.base_url + path, params=query, json=body
            ) as response:
                text = await response.text()
                if response.status >= 400:
                    raise _error_for(response.status, path, text)
                if not text or not parse:
                    return None
                return orjson.loads(text)
        except AriError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise AriUnavailable(
                f"ARI {method} {path}: {type(exc).__name__}: {exc}", path=path
            ) from exc

    async def _request_over_websocket(self, call: RestCall, parse: bool = True) -> Any:
        """One RESTRequest frame out, its RESTResponse back through the reader:
        no HTTP parsing or authentication per request on either side."""
        future: asyncio.Future[Json] = asyncio.get_running_loop().create_future()

        def answer(response: Json | AriError) -> None:
            if future.done():
                return  # the waiter was cancelled
            if isinstance(response, AriError):
                future.set_exception(response)
            else:
                future.set_result(response)

        self._submit(call, answer)
        text = _checked_body(call, await future)
        return orjson.loads(text) if text and parse else None

    def _submit(self, call: RestCall, answer: Answer) -> None:
        request_id = str(next(self._request_ids))
        message: Json = {
            "type": "RESTRequest",
            "request_id": request_id,
            "method": call.method,
            "uri": call.path.lstrip("/"),
        }
        if call.params:
            message["query_strings"] = [
                {"name": k, "value": str(v)} for k, v in call.params.items()
            ]
        if call.body is not None:
            message["content_type"] = "application/json"
            message["message_body"] = orjson.dumps(call.body).decode()
        loop = asyncio.get_running_loop()
        self._pending[request_id] = _Pending(call, loop.time() + self._request_timeout_s, answer)
        self._outgoing.append(orjson.dumps(message))
        self._wake_sender.set()
        if self._sweep is None:
            self._sweep = loop.call_later(self._sweep_every_s, self._expire_overdue)

    async def _send_frames(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """The websocket's one writer: frames go out in the order submitted
        (requests issued together leave in one wake-up of this task)."""
        try:
            while True:
                await self._wake_sender.wait()
                self._wake_sender.clear()
                while self._outgoing:
                    await ws.send_frame(self._outgoing.popleft(), aiohttp.WSMsgType.TEXT)
        except (aiohttp.ClientError, OSError) as exc:
            # The reader sees the connection go too; the answers will not come.
            self._fail_pending(f"{type(exc).__name__}: {exc}")

    def _expire_overdue(self) -> None:
        """Requests past their deadline get AriUnavailable (pending is in
        the order sent, all with the same timeout: stop at the first in time)."""
        self._sweep = None
        now = asyncio.get_running_loop().time()
        overdue = []
        for request_id, pending in self._pending.items():
            if pending.deadline > now:
                break
            overdue.append(request_id)
        for request_id in overdue:
            pending = self._pending.pop(request_id)
            call = pending.call
            pending.answer(
                AriUnavailable(
                    f"ARI {call.method} {call.path}: no answer over the websocket", path=call.path
                )
            )
        # (An answer above may have sent a request, which armed the sweep.)
        if self._pending and self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(
                self._sweep_every_s, self._expire_overdue
            )

    async def check_rest_over_websocket(self, timeout_s: float = 1.0) -> bool:
        """Ask Asterisk something over the websocket once connected. An
        Asterisk older than 20.14/21.9/22.4 never answers RESTRequest: then
        REST goes over HTTP for the rest of this connection, rather than
        every request waiting out its timeout."""
        ws = self._ws
        if not self.rest_over_websocket or ws is None or ws.closed:
            return False
        try:
            async with asyncio.timeout(timeout_s):
                await self._request_over_websocket(RestCall("GET", "/asterisk/ping"))
        except (AriError, TimeoutError) as exc:
            if ws.closed or self._ws is not ws:
                return False  # the connection ended under the question, not the feature
            log.warning("ARI REST over the websocket unavailable (%s): using HTTP", exc)
            self.rest_over_websocket = False
            return False
        return True

    def _answered(self, response: Json) -> None:
        pending = self._pending.pop(str(response.get("request_id", "")), None)
        if pending is not None:
            pending.answer(response)

    def _fail_pending(self, reason: str) -> None:
        self._outgoing.clear()
        pending, self._pending = self._pending, {}
        for item in pending.values():
            item.answer(AriUnavailable(f"ARI websocket closed: {reason}", path=item.call.path))

    # asterisk
    async def info(self) -> Json:
        result: Json = await self.request("GET", "/asterisk/info")
        return result

    async def ping(self) -> Json:
        result: Json = await self.request("GET", "/asterisk/ping")
        return result

    # channels
    async def list_channels(self) -> list[Json]:
        result: list[Json] = await self.request("GET", "/channels")
        return result

    async def get_channel(self, channel_id: str) -> Json:
        result: Json = await self.request("GET", f"/channels/{_p(channel_id)}")
        return result

    async def hangup(self, channel_id: str, reason: str = "normal") -> None:
        await self.call(Rest.hangup(channel_id, reason))

    async def play(self, channel_id: str, playback_id: str, media: Iterable[str]) -> None:
        # The playback's JSON is not read: its id is ours, its events follow.
        await self.call(Rest.play(channel_id, playback_id, media), parse=False)

    async def stop_playback(self, playback_id: str) -> None:
        await self.call(Rest.stop_playback(playback_id))

    async def get_playback(self, playback_id: str) -> Json:
        result: Json = await self.request("GET", f"/playbacks/{_p(playback_id)}")
        return result

    async def originate(
        self,
        endpoint: str,
        *,
        channel_id: str,
        app_args: str = "",
        other_channel_id: str | None = None,
        caller_id: str | None = None,
        timeout_s: int = 30,
        variables: Mapping[str, str] | None = None,
        originator: str | None = None,
    ) -> None:
        """Originate into our app. Choose the ids yourself and arm any waiter
        *before* calling: StasisStart can arrive before this returns (the
        channel's JSON in the answer is not read: its StasisStart tells more)."""
        call = Rest.originate(
            self.app,
            endpoint,
            channel_id=channel_id,
            app_args=app_args,
            other_channel_id=other_channel_id,
            caller_id=caller_id,
            timeout_s=timeout_s,
            variables=variables,
            originator=originator,
        )
        await self.call(call, parse=False)

    async def set_variable(self, channel_id: str, name: str, value: str) -> None:
        await self.request(
            "POST", f"/channels/{_p(channel_id)}/variable", {"variable": name, "value": value}
        )

    async def get_variable(self, channel_id: str, name: str) -> str:
        result: Json = await self.request(
            "GET", f"/channels/{_p(channel_id)}/variable", {"variable": name}
        )
        return str(result.get("value", ""))

    async def ring(self, channel_id: str) -> None:
        await self.request("POST", f"/channels/{_p(channel_id)}/ring")

    async def send_dtmf(self, channel_id: str, digits: str) -> None:
        await self.request("POST", f"/channels/{_p(channel_id)}/dtmf", {"dtmf": digits})

    async def snoop(
        self, channel_id: str, snoop_id: str, *, spy: str = "in", app_args: str = ""
    ) -> Json:
        result: Json = await self.request(
            "POST",
            f"/channels/{_p(channel_id)}/snoop/{_p(snoop_id)}",
            {"spy": spy, "whisper": "none", "app": self.app, "appArgs": app_args},
        )
        return result

    async def record_channel(self, channel_id: str, name: str, *, fmt: str = "wav") -> Json:
        result: Json = await self.request(
            "POST",
            f"/channels/{_p(channel_id)}/record",
            _record_params(name, fmt),
        )
        return result

    # bridges
    async def create_bridge(self, bridge_id: str, bridge_type: str = "mixing") -> Json:
        result: Json = await self.call(Rest.create_bridge(bridge_id, bridge_type))
        return result

    async def add_to_bridge(self, bridge_id: str, channel_ids: Iterable[str]) -> None:
        await self.call(Rest.add_to_bridge(bridge_id, channel_ids))

    async def remove_from_bridge(self, bridge_id: str, channel_id: str) -> None:
        await self.request(
            "POST", f"/bridges/{_p(bridge_id)}/removeChannel", {"channel": channel_id}
        )

    async def destroy_bridge(self, bridge_id: str) -> None:
        await self.call(Rest.destroy_bridge(bridge_id))

    async def list_bridges(self) -> list[Json]:
        result: list[Json] = await self.request("GET", "/bridges")
        return result

    async def get_bridge(self, bridge_id: str) -> Json:
        result: Json = await self.request("GET", f"/bridges/{_p(bridge_id)}")
        return result

    async def record_bridge(self, bridge_id: str, name: str, *, fmt: str = "wav") -> Json:
        result: Json = await self.request(
            "POST",
            f"/bridges/{_p(bridge_id)}/record",
            _record_params(name, fmt),
        )
        return result

    # recordings
    async def stop_recording(self, name: str) -> None:
        await self.request("POST", f"/recordings/live/{_p(name)}/stop")

    async def pause_recording(self, name: str) -> None:
        await self.call(Rest.pause_recording(name))

    async def unpause_recording(self, name: str) -> None:
        await self.call(Rest.unpause_recording(name))

    async def delete_stored_recording(self, name: str) -> None:
        await self.request("DELETE", f"/recordings/stored/{_p(name)}")

    # -- events -----------------------------------------------------------------

    def _events_url(self) -> str:
        ws_base = "ws" + self.base_url[len("http") :]
        return f"{ws_base}/events?app={quote(self.app)}&subscribeAll=false"

    async def app_registered(self) -> bool:
        """Whether Asterisk has our app now. Asked over HTTP: it is the
        websocket's own session that is in doubt."""
        try:
            await self._request_over_http("GET", f"/applications/{_p(self.app)}")
        except AriNotFound:
            return False
        return True

    async def _deaf(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        """Asterisk accepted the websocket, but our app is not registered:
        an earlier connection of the app that ended without a close
        handshake (a killed controller, a cut network) was cleaned up just
        after ours registered it, and took the registration with it
        (measured: 6 of 200 reconnects right after an abort). Such a
        websocket gets no events and no REST answers. Unanswerable (Asterisk
        busy, HTTP down): not deaf; the heartbeat judges the websocket."""
        try:
            registered = await self.app_registered()
        except AriError as exc:
            log.debug("ARI app check not answered: %s", exc)
            return False
        if registered:
            return False
        self.deaf_connections += 1
        log.warning(
            "ARI app %s not registered on its new websocket (an earlier connection's end"
            " raced it): connecting again",
            self.app,
        )
        await ws.close()
        return True

    async def _watch_registration(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """The app stays registered while the websocket is open; checked every
        heartbeat, in case the race above came later than the first check."""
        while True:
            await asyncio.sleep(self._heartbeat)
            if ws.closed or await self._deaf(ws):
                return

    async def run_events(self) -> None:
        """Keep the websocket open forever, reconnecting with capped,
        jittered exponential backoff. Items land on `self.events`. A
        websocket without our app registered is closed and made again
        before anyone hears of it (see `_deaf`)."""
        attempt = 0
        first = True
        sender: asyncio.Task[None] | None = None
        watcher: asyncio.Task[None] | None = None
        while not self._closing:
            reason = "connection lost"
            deaf = False
            try:
                async with self.session.ws_connect(
                    self._events_url(),
                    heartbeat=self._heartbeat,
                    autoping=True,
                    max_msg_size=16 * 1024 * 1024,
                    timeout=aiohttp.ClientWSTimeout(ws_close=2),
                ) as ws:
                    # The losing cleanup comes within milliseconds: give it
                    # time to show before asking (after that, the watcher).
                    await asyncio.sleep(REGISTRATION_GRACE_S)
                    if await self._deaf(ws):
                        deaf = True
                        continue  # (the finally below runs first)
                    self._ws = ws
                    loop = asyncio.get_running_loop()
                    sender = loop.create_task(self._send_frames(ws))
                    watcher = loop.create_task(self._watch_registration(ws))
                    attempt = 0
                    self.connected.set()
                    self.events.put_nowait(StreamConnected(reconnect=not first))
                    first = False
                    log.info("ARI events connected (app %s)", self.app)
                    async for message in ws:
                        if message.type is aiohttp.WSMsgType.TEXT:
                            try:
                                data = orjson.loads(message.data)
                            except ValueError:
                                log.error("ARI sent a frame that is not JSON: %.200r", message.data)
                                continue
                            if isinstance(data, dict) and data.get("type") == "RESTResponse":
                                self._answered(data)
                            else:
                                self.events_received += 1
                                self.events.put_nowait(data)
                        elif message.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                            break
                    reason = f"closed by Asterisk (code {ws.close_code})"
            except aiohttp.WSServerHandshakeError as exc:
                reason = f"handshake refused: HTTP {exc.status}"
                if exc.status in (401, 403):
                    reason += " (check ARI username and password)"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self._ws = None
                self.connected.clear()
                self._fail_pending(reason)
                for task in (sender, watcher):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                sender = watcher = None
                if deaf:
                    # Nobody heard of this websocket: no StreamDisconnected.
                    await asyncio.sleep(self._backoff(attempt))
                    attempt += 1
            if self._closing:
                break
            delay = self._backoff(attempt)
            attempt += 1
            self.events.put_nowait(StreamDisconnected(reason))
            log.warning("ARI events disconnected: %s; reconnecting in %.2fs", reason, delay)
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        # A fast first retry: calls are refused while no websocket is connected.
        return backoff_s(attempt, 0.05, self._reconnect_max)


# How long a new websocket waits before asking whether our app is registered.
REGISTRATION_GRACE_S = 0.05


def _record_params(name: str, fmt: str) -> dict[str, str | int]:
    # Never overwrite a file, no beep, and DTMF does not stop a recording.
    return {"name": name, "format": fmt, "ifExists": "fail", "beep": "false", "terminateOn": "none"}


def _p(segment: str) -> str:
    # Our ids need no quoting; quote() costs more than the rest of a request.
    return segment if _UNRESERVED(segment) else quote(segment, safe="")


_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]*").fullmatch
