"""FastAGI server: where the dialplan's `AGI(agi://host:port/<script>,args)` lands.

The contract, for every connection:

    Either a handler handles it, or the server answers
    `VERBOSE "pbx-controller: <reason>" 1` then `HANGUP`, and logs one line.
    Never anything else.

So no traceback leaves a session, no peer can stall the server (every read
has a deadline, lines and environment size are bounded, each connection is
its own task), and one bad peer never affects another connection.
`tests/unit/test_agi_protocol.py` fuzzes this with Hypothesis over a real
loopback socket.

Why not `panoramisk.fast_agi.Application` (panoramisk stays our AMI client):
its request reader spins forever at 100% CPU when the peer closes before the
blank line (`reader.read()` keeps returning b""), has no size bound and no
timeout, raises UnicodeDecodeError on binary junk, answers nothing at all for
an unknown script, and wraps sync handlers with `asyncio.coroutine` (gone in
3.11). Fixing that means replacing `Application.handler`, which is all of it,
so this is a thin server on `asyncio.start_server`.

Protocol facts this relies on (res_agi.c, Asterisk 22):

- Asterisk sends `agi_network: yes`, `agi_network_script: <path>` (only when
  the URL has a path), the `agi_*: value` lines, `agi_arg_N` for the AGI()
  arguments, then an empty line.
- It reads our commands with stdio `fgets` after `poll()` on the socket, so
  commands go strictly one at a time: a pipelined second command can sit in
  its stdio buffer unseen. We send, read the answer, then send the next.
- A command line of 2048 bytes or more is split into two commands by
  Asterisk; we refuse to send one.
- `HANGUP` arrives unsolicited when the channel hangs up; later commands are
  answered `511` (or `200 result=-1`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from pbx_controller.config import AgiSettings

log = logging.getLogger(__name__)

__all__ = [
    "RESULT_NO_ENDPOINT",
    "AgentCommandsPort",
    "AgiChannel",
    "AgiCommandError",
    "AgiConnectionError",
    "AgiError",
    "AgiHandler",
    "AgiHangup",
    "AgiLimits",
    "AgiRequest",
    "AgiRequestError",
    "AgiResponse",
    "AgiRouter",
    "AgiServer",
    "AgiUnknownScript",
    "DirectoryPort",
    "agent_commands_handler",
    "build_router",
    "command_line",
    "did_lookup_handler",
    "endpoint_from_channel",
    "parse_env_line",
    "parse_response",
    "quote_arg",
    "read_environment",
    "serve_agi",
]

# Asterisk's command buffer (AGI_BUF_LEN) is 2048 bytes including the newline.
MAX_COMMAND_BYTES = 2047
# A 520 usage answer is a handful of lines; more means the peer is not Asterisk.
_MAX_USAGE_LINES = 64


# -- errors ---------------------------------------------------------------------------


class AgiError(Exception):
    """Anything that went wrong on a FastAGI connection."""


class AgiRequestError(AgiError):
    """The request cannot be served (malformed environment, missing script or
    argument). The message is the reason sent back in the VERBOSE line."""


class AgiUnknownScript(AgiRequestError):
    """No handler for the requested script path."""


class AgiCommandError(AgiError):
    """Asterisk did not answer `200 result=<non-negative>` to a command."""

    def __init__(self, message: str, *, command: str, line: str, code: int | None) -> None:
        super().__init__(message)
        self.command = command
        self.line = line
        self.code = code


class AgiHangup(AgiCommandError):
    """The channel is gone: `511`, or a negative result after `HANGUP`."""


class _NothingSent(AgiRequestError):
    """The peer connected and closed without a byte."""


class AgiConnectionError(AgiError):
    """No usable answer: timeout, closed connection, overlong or garbled line.
    The connection is out of step afterwards and takes no more commands."""


# -- pure protocol pieces -------------------------------------------------------------------


_ENV_LINE = re.compile(rb"(agi_[a-z0-9_]{1,64}): ?(.*)", re.DOTALL)
_ARG_KEY = re.compile(r"agi_arg_([1-9][0-9]{0,3})")
_ANSWER = re.compile(r"([1-5][0-9][0-9])(?: (.*))?", re.DOTALL)
# Greedy: a GET VARIABLE value may itself contain ")".
_RESULT = re.compile(r"result=(\S*)(?:\s+\((.*)\))?")
_VERB = re.compile(r"[A-Z]+(?: [A-Z]+)*")
_FORBIDDEN_IN_ARG = re.compile(r"[\x00\r\n]")


def parse_env_line(line: bytes) -> tuple[str, str]:
    """One `agi_key: value` line (without its newline) -> (key, value).

    Keys are strict ASCII; values are decoded leniently because a caller-id
    name may carry any bytes and must not cost the caller their call.
    """
    match = _ENV_LINE.fullmatch(line)
    if match is None:
        raise AgiRequestError(f"not an AGI environment line: {_excerpt(line)}")
    return match.group(1).decode("ascii"), match.group(2).decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class AgiResponse:
    """One answer to a command: `200 result=1 (data)`."""

    code: int
    result: str
    data: str | None
    line: str

    @property
    def value(self) -> int | None:
        """The result as an integer, None when it is not one (`result=` empty)."""
        try:
            return int(self.result)
        except ValueError:
            return None


def parse_response(line: str) -> AgiResponse:
    """Parse one answer line; AgiConnectionError when it is not AGI at all."""
    match = _ANSWER.fullmatch(line)
    if match is None:
        raise AgiConnectionError(f"not an AGI answer: {_excerpt(line)}")
    code, rest = int(match.group(1)), match.group(2) or ""
    if code != 200:
        return AgiResponse(code=code, result="", data=None, line=line)
    result = _RESULT.match(rest)
    if result is None:
        raise AgiConnectionError(f"200 answer without result=: {_excerpt(line)}")
    return AgiResponse(code=200, result=result.group(1), data=result.group(2), line=line)


def quote_arg(value: str) -> str:
    """Quote one command argument the way res_agi's parse_args unquotes it."""
    if _FORBIDDEN_IN_ARG.search(value):
        # A newline would end the command and start another one in Asterisk.
        raise ValueError(f"AGI argument contains NUL, CR or LF: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def command_line(verb: str, *args: str | int) -> str:
    """`SET VARIABLE "PBX_TENANT" "acme"`; ValueError if Asterisk would misread it."""
    if not _VERB.fullmatch(verb):
        raise ValueError(f"not an AGI command verb: {verb!r}")
    line = " ".join([verb, *(str(a) if isinstance(a, int) else quote_arg(a) for a in args)])
    if len(line.encode()) > MAX_COMMAND_BYTES:
        raise ValueError(f"{verb} is longer than {MAX_COMMAND_BYTES} bytes")
    return line


def _excerpt(data: bytes | str, limit: int = 60) -> str:
    # repr() escapes control characters, so peer data cannot forge log lines.
    text = repr(data[:limit])
    return text + ("..." if len(data) > limit else "")


def _printable(text: str, limit: int = 200) -> str:
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned[:limit]


# -- the request ---------------------------------------------------------------------------


_PJSIP_CHANNEL = re.compile(r"PJSIP/(?P<endpoint>.+)-[0-9a-f]{8}")


def endpoint_from_channel(channel: str) -> str | None:
    """`PJSIP/agent-7-0000001a` -> `agent-7`; None for any other technology,
    e.g. a Local channel (`Local/*21@pbx-agents-00000003;2`) has no endpoint."""
    match = _PJSIP_CHANNEL.fullmatch(channel)
    return match.group("endpoint") if match else None


@dataclass(frozen=True, slots=True)
class AgiRequest:
    """Our typed view of one FastAGI request, plus `agi` to answer on it."""

    script: str
    channel: str
    uniqueid: str
    callerid: str
    calleridname: str
    extension: str
    context: str
    priority: str
    args: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)
    agi: AgiChannel = field(repr=False, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str], agi: AgiChannel) -> AgiRequest:
        script = env.get("agi_network_script", "")
        # A query string (`agi://host/script?x=1`) is not part of the route.
        path = script.split("?", 1)[0].strip("/")
        if not path:
            raise AgiRequestError("no agi_network_script: the AGI URL has no script path")
        if "agi_channel" not in env:
            raise AgiRequestError("no agi_channel in the AGI environment")
        return cls(
            script=path,
            channel=env["agi_channel"],
            uniqueid=env.get("agi_uniqueid", ""),
            callerid=env.get("agi_callerid", ""),
            calleridname=env.get("agi_calleridname", ""),
            extension=env.get("agi_extension", ""),
            context=env.get("agi_context", ""),
            priority=env.get("agi_priority", ""),
            args=_args(env),
            env=MappingProxyType(dict(env)),
            agi=agi,
        )

    def arg(self, index: int, default: str | None = None) -> str:
        """The AGI() argument at `index` (0-based); AgiRequestError if missing."""
        if index < len(self.args):
            return self.args[index]
        if default is not None:
            return default
        raise AgiRequestError(f"argument {index + 1} is missing")


def _args(env: Mapping[str, str]) -> tuple[str, ...]:
    numbered: dict[int, str] = {}
    for key, value in env.items():
        match = _ARG_KEY.fullmatch(key)
        if match:
            numbered[int(match.group(1))] = value
        elif key.startswith("agi_arg_"):
            raise AgiRequestError(f"malformed argument key {key!r}")
    if sorted(numbered) != list(range(1, len(numbered) + 1)):
        raise AgiRequestError("agi_arg_N numbering has a gap")
    return tuple(numbered[n] for n in range(1, len(numbered) + 1))


# -- talking back to Asterisk ----------------------------------------------------------------


class AgiChannel:
    """Sends AGI commands on one FastAGI connection, strictly one at a time,
    and checks each answer. Any answer but `200 result=<n >= 0>` raises."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, timeout_s: float
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout_s = timeout_s
        self._lock = asyncio.Lock()
        self.hung_up = False  # Asterisk said HANGUP: the channel is gone
        self.usable = True  # False once an answer went missing or was garbled

    async def command(
        self, verb: str, *args: str | int, timeout_s: float | None = None
    ) -> AgiResponse:
        """Send `VERB "arg" ... 1` (strings quoted, ints bare); return the checked answer."""
        line = command_line(verb, *args)
        async with self._lock:
            if not self.usable:
                raise AgiConnectionError(f"{verb}: connection already out of step")
            try:
                async with asyncio.timeout(timeout_s or self._timeout_s):
                    self._writer.write(line.encode() + b"\n")
                    await self._writer.drain()
                    answer = await self._read_answer()
            except TimeoutError:
                self.usable = False
                raise AgiConnectionError(
                    f"{verb}: no answer within {timeout_s or self._timeout_s:g}s"
                ) from None
            except (AgiConnectionError, ConnectionError) as exc:
                self.usable = False
                raise AgiConnectionError(f"{verb}: {exc}") from None
            except asyncio.CancelledError:
                # Cancelled between command and answer: a late answer would be
                # read as the next command's.
                self.usable = False
                raise
        return self._check(verb, answer)

    def _check(self, verb: str, answer: AgiResponse) -> AgiResponse:
        if answer.code == 511:
            raise AgiHangup(
                f"{verb}: channel hung up ({answer.line})", command=verb, line=answer.line, code=511
            )
        if answer.code != 200:
            raise AgiCommandError(
                f"{verb}: {answer.line}", command=verb, line=answer.line, code=answer.code
            )
        if answer.result.startswith("-"):
            kind = AgiHangup if self.hung_up else AgiCommandError
            raise kind(f"{verb}: failed ({answer.line})", command=verb, line=answer.line, code=200)
        return answer

    async def _read_answer(self) -> AgiResponse:
        line = await self._readline()
        while line == "HANGUP":
            self.hung_up = True
            line = await self._readline()
        if not line.startswith("520-"):
            return parse_response(line)
        usage = [line]
        for _ in range(_MAX_USAGE_LINES):
            usage.append(await self._readline())
            if usage[-1].startswith("520 "):
                return AgiResponse(code=520, result="", data=None, line="\n".join(usage))
        raise AgiConnectionError("520 usage answer without an end")

    async def _readline(self) -> str:
        try:
            raw = await self._reader.readline()
        except ValueError:  # the StreamReader's line limit
            raise AgiConnectionError("answer line too long") from None
        if not raw.endswith(b"\n"):
            raise AgiConnectionError("connection closed while waiting for an answer")
        return raw[:-1].removesuffix(b"\r").decode("utf-8", errors="replace")

    def write_unchecked(self, line: str) -> None:
        """Write a line without waiting for its answer: only for the last words
        to a peer that is not speaking AGI properly."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            self._writer.write(line.encode() + b"\n")

    # the commands the handlers use --------------------------------------------------------

    async def set_variable(self, name: str, value: str) -> None:
        await self.command("SET VARIABLE", name, value)

    async def get_variable(self, name: str) -> str | None:
        """The variable's value, None when it is not set (`result=0`)."""
        answer = await self.command("GET VARIABLE", name)
        return answer.data if answer.result == "1" else None

    async def verbose(self, message: str, level: int = 1) -> None:
        await self.command("VERBOSE", message, level)

    async def answer(self) -> None:
        await self.command("ANSWER")

    async def hangup(self) -> None:
        await self.command("HANGUP")

    async def exec(self, application: str, *args: str, timeout_s: float | None = None) -> int:
        """Run a dialplan application; its return value (negative raises)."""
        options = (",".join(args),) if args else ()
        answer = await self.command("EXEC", application, *options, timeout_s=timeout_s)
        return answer.value or 0

    async def stream_file(
        self, name: str, escape_digits: str = "", *, timeout_s: float | None = None
    ) -> str | None:
        """Play a sound file; the escape digit pressed, or None if it played out."""
        answer = await self.command("STREAM FILE", name, escape_digits, timeout_s=timeout_s)
        return chr(answer.value) if answer.value and answer.value < 128 else None


# -- routing ---------------------------------------------------------------------------------


AgiHandler = Callable[[AgiRequest], Awaitable[None]]


class AgiRouter:
    """Script path -> async handler. `add("did/lookup", h)` is one path;
    `add("agent/*", h)` is a group: every `agent/...` path not added exactly."""

    def __init__(self) -> None:
        self._exact: dict[str, AgiHandler] = {}
        self._groups: dict[str, AgiHandler] = {}

    def add(self, path: str, handler: AgiHandler) -> None:
        call = getattr(handler, "__call__", None)  # noqa: B004 - also async __call__ objects
        if not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)):
            raise TypeError(f"AGI handler for {path!r} must be an async def")
        path = path.strip("/")
        table, key = (self._groups, path[:-1]) if path.endswith("/*") else (self._exact, path)
        if not key or key in table:
            raise ValueError(f"AGI route {path!r} is empty or already taken")
        table[key] = handler

    def resolve(self, script: str) -> AgiHandler | None:
        if script in self._exact:
            return self._exact[script]
        prefixes = [p for p in self._groups if script.startswith(p) and len(script) > len(p)]
        return self._groups[max(prefixes, key=len)] if prefixes else None

    @property
    def paths(self) -> list[str]:
        return sorted([*self._exact, *(f"{p}*" for p in self._groups)])


# -- the ports the service provides, and the handlers on them -----------------------------


class DirectoryPort(Protocol):
    async def tenant_for_did(self, did: str) -> str | None: ...


class AgentCommandsPort(Protocol):
    """Agent feature codes. Each returns the result code set in PBX_RESULT
    ("OK" on success, by convention)."""

    async def login(self, endpoint: str) -> str: ...
    async def logout(self, endpoint: str) -> str: ...
    async def pause(self, endpoint: str, reason: str) -> str: ...
    async def unpause(self, endpoint: str) -> str: ...


# Set by the adapter itself: the calling channel is not an agent phone.
RESULT_NO_ENDPOINT = "NO_ENDPOINT"


def did_lookup_handler(directory: DirectoryPort) -> AgiHandler:
    """`did/lookup,<did>`: sets PBX_TENANT to the DID's tenant, empty if unknown."""

    async def did_lookup(request: AgiRequest) -> None:
        did = request.arg(0)
        tenant = await directory.tenant_for_did(did)
        await request.agi.set_variable("PBX_TENANT", tenant or "")

    return did_lookup


def agent_commands_handler(agents: AgentCommandsPort) -> AgiHandler:
    """`agent/login|logout|pause,<reason>|unpause` for the calling PJSIP endpoint;
    sets PBX_RESULT to the port's result code."""

    async def agent_command(request: AgiRequest) -> None:
        command = request.script.removeprefix("agent/")
        if command not in ("login", "logout", "pause", "unpause"):
            raise AgiUnknownScript(f"unknown agent command {request.script!r}")
        endpoint = endpoint_from_channel(request.channel)
        if endpoint is None:
            reason = f"agent {command} needs a PJSIP phone, not {request.channel}"
            log.info("agi: %s", reason)
            await request.agi.verbose(f"pbx-controller: {_printable(reason)}")
            await request.agi.set_variable("PBX_RESULT", RESULT_NO_ENDPOINT)
            return
        if command == "login":
            result = await agents.login(endpoint)
        elif command == "logout":
            result = await agents.logout(endpoint)
        elif command == "pause":
            result = await agents.pause(endpoint, request.arg(0, default=""))
        else:
            result = await agents.unpause(endpoint)
        await request.agi.set_variable("PBX_RESULT", result)

    return agent_command


def build_router(directory: DirectoryPort, agents: AgentCommandsPort) -> AgiRouter:
    """The controller's routes: `did/lookup` and the `agent/*` feature codes."""
    router = AgiRouter()
    router.add("did/lookup", did_lookup_handler(directory))
    router.add("agent/*", agent_commands_handler(agents))
    return router


# -- the server ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgiLimits:
    max_line_bytes: int = 8192
    max_env_lines: int = 256  # Asterisk sends ~25 plus one per AGI() argument
    env_timeout_s: float = 5.0  # the whole environment, not per line: no slow drip
    command_timeout_s: float = 10.0
    handler_timeout_s: float = 60.0
    refuse_timeout_s: float = 2.0  # per answer line while refusing
    linger_s: float = 1.0  # reading what the peer still sends, so close() sends no RST
    max_sessions: int = 512


async def read_environment(reader: asyncio.StreamReader, limits: AgiLimits) -> dict[str, str]:
    """Read `agi_*` lines up to the empty line; AgiRequestError if malformed."""
    env: dict[str, str] = {}
    while True:
        try:
            raw = await reader.readline()
        except ValueError:  # the StreamReader's line limit
            raise AgiRequestError(
                f"AGI environment line longer than {limits.max_line_bytes} bytes"
            ) from None
        if not raw.endswith(b"\n"):
            if not env and not raw:
                raise _NothingSent("connection closed before any AGI environment")
            raise AgiRequestError(f"truncated AGI environment: closed after {len(env)} lines")
        line = raw[:-1].removesuffix(b"\r")
        if not line:
            return env
        if len(env) >= limits.max_env_lines:
            raise AgiRequestError(f"more than {limits.max_env_lines} AGI environment lines")
        key, value = parse_env_line(line)
        if key in env:
            raise AgiRequestError(f"duplicate AGI environment key {key}")
        env[key] = value


class AgiServer:
    """Accepts FastAGI connections and runs each in its own task."""

    def __init__(
        self,
        router: AgiRouter,
        *,
        host: str = "127.0.0.1",
        port: int = 4573,
        limits: AgiLimits | None = None,
    ) -> None:
        self.router = router
        self.host = host
        self.limits = limits or AgiLimits()
        self._port = port
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self.handled = 0
        self.refused = 0

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._session, self.host, self._port, limit=self.limits.max_line_bytes
        )
        log.info(
            "FastAGI listening on %s:%d (%s)", self.host, self.port, ", ".join(self.router.paths)
        )

    async def close(self, grace_s: float = 2.0) -> None:
        """Stop accepting, give running sessions `grace_s`, then cancel them."""
        if self._server is None:
            return
        self._server.close()
        if self._sessions:
            await asyncio.wait(set(self._sessions), timeout=grace_s)
        for task in list(self._sessions):
            task.cancel()
        for task in list(self._sessions):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> AgiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        peer = writer.get_extra_info("peername")
        channel = AgiChannel(reader, writer, timeout_s=self.limits.command_timeout_s)
        try:
            await self._serve(reader, channel, peer)
        except Exception:  # the contract's last line: log it, the connection just closes
            log.exception("agi: session from %s failed", peer)
        finally:
            try:
                if not task.cancelling():  # closing down: no time to linger
                    await self._linger(reader, writer)
            finally:
                writer.close()
                self._sessions.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, channel: AgiChannel, peer: object) -> None:
        limits = self.limits
        if len(self._sessions) > limits.max_sessions:
            self._refuse_unchecked(channel, peer, "too many concurrent AGI sessions")
            return
        try:
            async with asyncio.timeout(limits.env_timeout_s):
                env = await read_environment(reader, limits)
        except TimeoutError:
            reason = f"no complete AGI environment within {limits.env_timeout_s:g}s"
            self._refuse_unchecked(channel, peer, reason)
            return
        except AgiRequestError as exc:
            # A bare connect-and-close is a port probe (health checks): not worth a warning.
            quiet = isinstance(exc, _NothingSent)
            self._refuse_unchecked(channel, peer, str(exc), quiet=quiet)
            return
        # From here on the peer sent a well-formed environment: it speaks AGI, so
        # answers go one at a time, as Asterisk needs them.
        try:
            request = AgiRequest.from_env(env, channel)
        except AgiRequestError as exc:
            await self._refuse(channel, peer, str(exc))
            return
        who = f"{request.channel} {peer}"
        handler = self.router.resolve(request.script)
        if handler is None:
            await self._refuse(channel, who, f"unknown AGI script {request.script!r}")
            return
        try:
            async with asyncio.timeout(limits.handler_timeout_s):
                await handler(request)
        except TimeoutError:
            reason = f"{request.script} took longer than {limits.handler_timeout_s:g}s"
            await self._refuse(channel, who, reason)
        except AgiHangup as exc:  # the caller hung up: normal life, not a warning
            await self._refuse(channel, who, str(exc), quiet=True)
        except AgiError as exc:
            await self._refuse(channel, who, f"{request.script}: {exc}")
        except Exception as exc:
            log.exception("agi: handler for %s on %s failed", request.script, request.channel)
            await self._refuse(channel, who, f"{request.script} failed: {type(exc).__name__}")
        else:
            self.handled += 1

    async def _refuse(
        self, channel: AgiChannel, who: object, reason: str, *, quiet: bool = False
    ) -> None:
        """VERBOSE + HANGUP, one answer at a time; unchecked once the peer is out of step."""
        self._log_refusal(who, reason, quiet=quiet)
        verbose: tuple[str | int, ...] = (f"pbx-controller: {_printable(reason)}", 1)
        for verb, args in (("VERBOSE", verbose), ("HANGUP", ())):
            if not channel.usable:
                channel.write_unchecked(command_line(verb, *args))
                continue
            with contextlib.suppress(AgiError):
                await channel.command(verb, *args, timeout_s=self.limits.refuse_timeout_s)

    def _refuse_unchecked(
        self, channel: AgiChannel, who: object, reason: str, *, quiet: bool = False
    ) -> None:
        """The peer is not speaking AGI properly: write the answer, wait for nothing."""
        self._log_refusal(who, reason, quiet=quiet)
        channel.usable = False
        channel.write_unchecked(command_line("VERBOSE", f"pbx-controller: {_printable(reason)}", 1))
        channel.write_unchecked("HANGUP")

    def _log_refusal(self, who: object, reason: str, *, quiet: bool) -> None:
        self.refused += 1
        log.log(logging.INFO if quiet else logging.WARNING, "agi: refused %s: %s", who, reason)

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Half-close, then drain what the peer still sends: closing with unread
        # input makes the kernel send RST, and the peer may lose our answer.
        with contextlib.suppress(Exception):
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(self.limits.linger_s):
                while await reader.read(65536):
                    pass


async def serve_agi(
    settings: AgiSettings, router: AgiRouter, *, limits: AgiLimits | None = None
) -> AgiServer:
    """Start the FastAGI server on the configured address; `await server.close()`."""
    server = AgiServer(router, host=settings.host, port=settings.port, limits=limits)
    await server.start()
    return server
