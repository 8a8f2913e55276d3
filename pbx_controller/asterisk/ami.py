"""AMI client: a thin, typed wrapper over panoramisk's `Manager`.

What it adds to panoramisk 1.4, and why:

- `connect()` returns once logged in (panoramisk logs in from a callback),
  and raises `AmiAuthError` on a refused login instead of letting panoramisk
  retry a wrong password forever.
- `action()` has a timeout, raises `AmiActionError` for `Response: Error`,
  and waits for the (re)login before writing: panoramisk silently drops
  writes into a lost connection.
- After a lost connection panoramisk reconnects and logs in again. Actions
  whose answer was lost fail with `AmiConnectionError` instead of being sent
  again after the reconnect (panoramisk's default): a repeated Originate is a
  second call, so the caller decides.
- Event subscriptions by name pattern, with async callbacks run in order per
  subscription in tasks we own (panoramisk fires and forgets them).
- No events unless subscribed: the session logs in with `Events: off` and
  turns the event mask on (`Events` action) while a subscription exists.
  Asterisk otherwise sends every call event (dozens per call) to a client
  that only needs actions, and panoramisk parses each of them.
- A heartbeat: panoramisk pings but never looks at the answer, so a hung
  Asterisk (TCP up, nothing answered) would go unnoticed. An unanswered Ping
  aborts the connection, and panoramisk reconnects.
- `close()` waits until the socket is really closed and disarms the reconnect
  timers panoramisk leaves behind (tests run with filterwarnings=error).
- The secret never reaches a log: panoramisk logs through a redacting adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeAlias

from panoramisk import Manager, Message
from panoramisk.ami_protocol import AMIProtocol

from pbx_controller.config import AmiSettings

log = logging.getLogger(__name__)

__all__ = [
    "ActionResult",
    "AmiActionError",
    "AmiAuthError",
    "AmiClient",
    "AmiConnectionError",
    "AmiError",
    "AmiTimeout",
    "EventCallback",
    "Message",
    "Subscription",
]

EventCallback = Callable[[Message], Awaitable[None]]
ActionResult: TypeAlias = "Message | list[Message]"

_SUCCESS = ("Success", "Follows", "Goodbye")


# -- errors ---------------------------------------------------------------------------


class AmiError(Exception):
    """Anything that went wrong talking to AMI."""


class AmiConnectionError(AmiError):
    """Not connected (in time), or the connection was lost before the answer."""


class AmiAuthError(AmiConnectionError):
    """Asterisk refused the login: wrong username or secret, or not permitted."""


class AmiTimeout(AmiError):
    """The action got no (complete) answer in time."""


class AmiActionError(AmiError):
    """`Response: Error` (or any non-success response) to an action."""

    def __init__(self, action: str, message: str, response: ActionResult) -> None:
        super().__init__(f"AMI {action}: {message or 'error'}")
        self.action = action
        self.message = message
        self.response = response


# -- panoramisk, held properly ------------------------------------------------------------


class _RedactingLog(logging.LoggerAdapter[logging.Logger]):
    """panoramisk's logger: formats each record itself and masks the secret."""

    def __init__(self, logger: logging.Logger, secret: str) -> None:
        super().__init__(logger, {})
        self._secret = secret

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = f"{msg} {args!r}"
        if self._secret:
            text = text.replace(self._secret, "**********")
        self.logger.log(level, "%s", text, **kwargs)


class _Protocol(AMIProtocol):  # type: ignore[misc]
    """Tells us when the socket is really closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: object) -> None:
        super().connection_lost(exc)
        # panoramisk also calls this itself on a `Shutdown` event (with the
        # message); only asyncio's call means the socket is closed.
        if not isinstance(exc, Message) and not self.lost.done():
            self.lost.set_result(None)


class _Manager(Manager):  # type: ignore[misc]
    def __init__(self, client: AmiClient, **config: Any) -> None:
        super().__init__(**config)
        self.client = client
        self.closing = False
        self.connect_task: asyncio.Task[Any] | None = None
        self.login_events = self.config["events"]

    def connect(self, *args: Any, **kwargs: Any) -> asyncio.Task[Any] | None:
        # panoramisk arms un-cancellable reconnect timers that land here.
        if self.closing:
            return None
        self.connect_task = super().connect(*args, **kwargs)
        return self.connect_task

    def connection_made(self, f: asyncio.Future[Any]) -> None:
        if f.cancelled():
            return
        if self.closing:  # connected after close(): drop it, quietly
            if f.exception() is None:
                transport, protocol = f.result()
                protocol.closed = True  # so it does not call back into the manager
                transport.close()
            return
        if f.exception() is not None:
            self.client.last_error = f.exception()
        self.login_events = self.config["events"]  # what the Login about to go says
        super().connection_made(f)

    def login(self, future: asyncio.Future[Any]) -> bool:
        authenticated = bool(super().login(future))
        self.client._login_finished(future.result(), authenticated)
        return authenticated

    def ping(self) -> None:
        """Replaced by AmiClient's heartbeat, which also checks the answer."""

    async def send_awaiting_actions(self, *_: Any) -> None:
        """Never resend after a reconnect: those actions already failed to their caller."""
        self.awaiting_actions.clear()


# -- the client ------------------------------------------------------------------------------


class Subscription:
    """Events whose name matches `pattern` (fnmatch, case-insensitive), fed in
    order to `callback`. A slow callback delays only its own subscription."""

    def __init__(
        self, client: AmiClient, pattern: str, callback: EventCallback, backlog: int
    ) -> None:
        self.pattern = pattern.lower()
        self.callback = callback
        self.dropped = 0
        self._client = client
        self._queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=backlog)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"ami-{pattern}")

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name.lower(), self.pattern)

    def offer(self, event: Message) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "AMI subscription %s is behind: %d events dropped", self.pattern, self.dropped
                )

    def cancel(self) -> None:
        self._client._subscriptions.discard(self)
        self._client._update_event_mask()
        self._task.cancel()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self.callback(event)
            except Exception:
                log.exception("AMI event callback for %s failed on %s", self.pattern, event.event)


class AmiClient:
    """One AMI connection: `await connect()`, `action()`, `subscribe()`, `close()`."""

    def __init__(
        self,
        settings: AmiSettings,
        *,
        action_timeout_s: float = 5.0,
        reconnect_s: int = 2,
        heartbeat_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.action_timeout_s = action_timeout_s
        self.heartbeat_s = heartbeat_s
        self.last_error: BaseException | None = None
        self.logins = 0  # successful logins, the first one included
        self._ready = asyncio.Event()
        self._first_login: asyncio.Future[None] | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._subscriptions: set[Subscription] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._closed = False
        secret = settings.password.get_secret_value()
        self._manager = _Manager(
            self,
            host=settings.host,
            port=settings.port,
            username=settings.username,
            secret=secret,
            protocol_factory=_Protocol,
            reconnect_timeout=reconnect_s,  # panoramisk takes whole seconds
            events="off",  # the Login's mask; on while a subscription exists
            on_disconnect=self._on_disconnect,
            log=_RedactingLog(logging.getLogger(f"{__name__}.panoramisk"), secret),
        )
        self._manager.register_event("*", self._dispatch)

    def __repr__(self) -> str:
        return (
            f"<AmiClient {self.settings.username}@{self.settings.host}:{self.settings.port}"
            f" {'ready' if self.ready else 'not ready'}>"
        )

    @property
    def ready(self) -> bool:
        """Connected and logged in."""
        return self._ready.is_set()

    # -- life cycle ---------------------------------------------------------------------

    async def connect(self, timeout_s: float = 10.0) -> None:
        """Connect and log in; retries a refused connection until `timeout_s`."""
        if self._closed:
            raise AmiConnectionError("AMI client is closed")
        loop = asyncio.get_running_loop()
        self._first_login = loop.create_future()
        self._manager.loop = loop
        self._manager.connect()
        try:
            async with asyncio.timeout(timeout_s):
                await self._first_login
        except TimeoutError:
            await self.close()
            detail = f": {self.last_error}" if self.last_error else ""
            raise AmiConnectionError(
                f"no AMI login at {self.settings.host}:{self.settings.port} "
                f"within {timeout_s:g}s{detail}"
            ) from None
        except AmiAuthError:
            await self.close()
            raise
        self._heartbeat = loop.create_task(self._beat(), name="ami-heartbeat")

    async def close(self) -> None:
        """Log nothing more, stop reconnecting, close the socket and wait for it."""
        self._closed = True
        self._ready.clear()
        tasks = [s._task for s in self._subscriptions]
        if self._heartbeat is not None:
            tasks.append(self._heartbeat)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._subscriptions.clear()
        self._heartbeat = None
        manager = self._manager
        manager.closing = True
        if manager.connect_task is not None and not manager.connect_task.done():
            manager.connect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await manager.connect_task
        protocol = manager.protocol
        manager.close()
        if protocol is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.shield(protocol.lost)
        self._fail_pending("AMI client closed")

    async def __aenter__(self) -> AmiClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- actions -------------------------------------------------------------------------

    async def action(
        self,
        action: Mapping[str, str | Sequence[str]],
        *,
        timeout_s: float | None = None,
        as_list: bool | None = None,
    ) -> ActionResult:
        """Send one action; its response, or the list of response + events for
        list actions (and for an async Originate: [Response, OriginateResponse],
        where a Failure in OriginateResponse is the call's outcome, not an error).
        OriginateResponse is an event: an async Originate needs a subscription
        (any) while it runs, or its answer never comes.
        """
        name = next((str(v) for k, v in action.items() if k.lower() == "action"), "")
        if not name:
            raise ValueError("an AMI action needs an 'Action' header")
        for key, value in action.items():
            for item in [value] if isinstance(value, str) else value:
                if "\r" in key or "\n" in key or "\r" in item or "\n" in item:
                    raise ValueError(f"AMI {name}: CR/LF in header {key!r}")
        timeout_s = timeout_s or self.action_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
                headers = {k: v if isinstance(v, str) else list(v) for k, v in action.items()}
                future = self._manager.send_action(headers, as_list=as_list)
                self._pending.add(future)
                try:
                    result: ActionResult = await future
                finally:
                    self._pending.discard(future)
        except TimeoutError:
            if not self.ready:
                raise AmiConnectionError(
                    f"AMI {name}: not logged in to {self.settings.host}:{self.settings.port} "
                    f"within {timeout_s:g}s"
                ) from None
            raise AmiTimeout(f"AMI {name}: no complete answer within {timeout_s:g}s") from None
        first = result[0] if isinstance(result, list) else result
        if first.response and first.response not in _SUCCESS:
            raise AmiActionError(name, first.message, result)
        return result

    async def ping(self, timeout_s: float | None = None) -> float:
        """Round trip of an AMI Ping, in seconds."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self.action({"Action": "Ping"}, timeout_s=timeout_s)
        return loop.time() - started

    # -- events --------------------------------------------------------------------------

    def subscribe(
        self, pattern: str, callback: EventCallback, *, backlog: int = 10_000
    ) -> Subscription:
        """Call `callback` for each event whose name matches `pattern` ("Cdr",
        "Var*", "*"). Subscribe before the action whose events you await."""
        if not asyncio.iscoroutinefunction(callback) and not asyncio.iscoroutinefunction(
            getattr(callback, "__call__", None)  # noqa: B004 - async __call__ objects too
        ):
            raise TypeError("AMI event callbacks must be async def")
        subscription = Subscription(self, pattern, callback, backlog)
        self._subscriptions.add(subscription)
        self._update_event_mask()
        return subscription

    def _update_event_mask(self) -> None:
        """Events on while anything is subscribed, off otherwise. The Events
        action is written at once, so it reaches Asterisk before any action
        sent after `subscribe()` returns; a login to come takes the mask
        from the config."""
        mask = "on" if self._subscriptions else "off"
        manager = self._manager
        if manager.config["events"] == mask:
            return
        manager.config["events"] = mask
        if self._closed or not self.ready:
            return  # the (re)login in flight checks the mask once it is in
        self._send_event_mask(mask)

    def _send_event_mask(self, mask: str) -> None:
        future = self._manager.send_action({"Action": "Events", "EventMask": mask})

        def done(f: asyncio.Future[Any]) -> None:
            if f.cancelled():
                return
            if f.exception() is not None:
                log.warning("AMI Events %s failed: %s", mask, f.exception())
            elif f.result().response not in _SUCCESS:
                log.warning("AMI Events %s refused: %s", mask, f.result().message)

        future.add_done_callback(done)

    def _dispatch(self, _manager: Manager, event: Message) -> None:
        # Runs inside panoramisk's reader: only hand the event over, never wait.
        name = event.event
        for subscription in list(self._subscriptions):
            if subscription.matches(name):
                subscription.offer(event)

    # -- connection state -------------------------------------------------------------------

    def _login_finished(self, response: Message, authenticated: bool) -> None:
        first = self._first_login
        if authenticated:
            self.logins += 1
            manager = self._manager
            if manager.login_events != manager.config["events"]:
                # Subscribed (or not any more) while the Login was in flight.
                self._send_event_mask(manager.config["events"])
            self._ready.set()
            log.info(
                "AMI logged in as %s at %s:%d",
                self.settings.username,
                self.settings.host,
                self.settings.port,
            )
            if first is not None and not first.done():
                first.set_result(None)
            return
        message = f"AMI login as {self.settings.username!r} refused: {response.message or '?'}"
        log.error("%s", message)
        if first is not None and not first.done():
            first.set_exception(AmiAuthError(message))

    def _on_disconnect(self, _manager: Manager, exc: object) -> None:
        self._ready.clear()
        if not self._closed:
            log.warning(
                "AMI connection to %s:%d lost; reconnecting", self.settings.host, self.settings.port
            )
        self._fail_pending("AMI connection lost before the answer")

    def _fail_pending(self, reason: str) -> None:
        for future in list(self._pending):
            if not future.done():
                future.set_exception(AmiConnectionError(reason))
        self._pending.clear()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if not self.ready:
                continue
            try:
                await self.ping(timeout_s=min(self.heartbeat_s, 5.0))
            except AmiError as exc:
                log.warning("AMI heartbeat failed (%s); dropping the connection", exc)
                protocol = self._manager.protocol
                if protocol is not None and not protocol.closed:
                    protocol.transport.abort()
