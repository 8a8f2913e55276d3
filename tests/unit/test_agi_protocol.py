"""The FastAGI server against real loopback sockets, no Asterisk needed.

The contract under test (pbx_controller/asterisk/agi.py): for every
connection, either a handler handles it, or the server answers
`VERBOSE "pbx-controller: <reason>" 1` + `HANGUP` and logs one line; never
anything else, and the server keeps serving.

The server runs in its own thread with its own event loop for the whole
module, so the Hypothesis fuzz hits one long-lived server with every example,
and the client is a plain blocking socket playing Asterisk's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pbx_controller.asterisk.agi import (
    AgiConnectionError,
    AgiLimits,
    AgiRequest,
    AgiResponse,
    AgiRouter,
    AgiServer,
    build_router,
    command_line,
    endpoint_from_channel,
    parse_response,
    quote_arg,
)

LIMITS = AgiLimits(
    max_line_bytes=8192,
    max_env_lines=64,
    env_timeout_s=0.3,
    command_timeout_s=0.3,
    handler_timeout_s=0.6,
    refuse_timeout_s=0.5,
    linger_s=0.5,
)


# -- the server, in a thread ------------------------------------------------------------------


class FakeDirectory:
    tenants = {"48221000001": "acme", "48221000002": 'quote "and" \\ backslash'}

    async def tenant_for_did(self, did: str) -> str | None:
        return self.tenants.get(did)


@dataclass
class FakeAgents:
    calls: list[tuple[str, ...]] = field(default_factory=list)

    async def login(self, endpoint: str) -> str:
        self.calls.append(("login", endpoint))
        return "OK"

    async def logout(self, endpoint: str) -> str:
        self.calls.append(("logout", endpoint))
        return "OK"

    async def pause(self, endpoint: str, reason: str) -> str:
        self.calls.append(("pause", endpoint, reason))
        return "OK" if reason else "REASON_REQUIRED"

    async def unpause(self, endpoint: str) -> str:
        self.calls.append(("unpause", endpoint))
        return "OK"


async def echo(request: AgiRequest) -> None:
    await request.agi.set_variable("PBX_FUZZ", "ok")


async def fail(request: AgiRequest) -> None:
    raise RuntimeError("boom")


async def slow(request: AgiRequest) -> None:
    await asyncio.sleep(30)


async def wait_in_asterisk(request: AgiRequest) -> None:
    await request.agi.exec("Wait", "30", timeout_s=30)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class ServerThread:
    agents: FakeAgents
    logs: Records
    port: int = 0
    server: AgiServer | None = None
    loop: asyncio.AbstractEventLoop | None = None
    stop: asyncio.Event | None = None
    loop_errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def outcomes(self) -> tuple[int, int]:
        assert self.server is not None
        return self.server.handled, self.server.refused


@pytest.fixture(scope="module")
def agi() -> Iterator[ServerThread]:
    logger = logging.getLogger("pbx_controller.asterisk.agi")
    state = ServerThread(agents=FakeAgents(), logs=Records())
    logger.addHandler(state.logs)
    previous_level = logger.level
    logger.setLevel(logging.DEBUG)
    started = threading.Event()

    async def main() -> None:
        state.loop = asyncio.get_running_loop()
        state.loop.set_exception_handler(lambda _loop, context: state.loop_errors.append(context))
        router = build_router(FakeDirectory(), state.agents)
        router.add("test/echo", echo)
        router.add("test/fail", fail)
        router.add("test/slow", slow)
        router.add("test/wait", wait_in_asterisk)
        state.stop = asyncio.Event()
        async with AgiServer(router, port=0, limits=LIMITS) as server:
            state.server, state.port = server, server.port
            started.set()
            await state.stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="agi-server")
    thread.start()
    try:
        assert started.wait(5), "AGI server did not start"
        yield state
    finally:
        if state.loop is not None and state.stop is not None:
            state.loop.call_soon_threadsafe(state.stop.set)
        thread.join(10)
        logger.removeHandler(state.logs)
        logger.setLevel(previous_level)
    assert not thread.is_alive()
    assert state.loop_errors == []


# -- Asterisk's side, on a blocking socket ---------------------------------------------------


def ok(_line: bytes) -> bytes:
    return b"200 result=1\n"


@dataclass
class Exchange:
    lines: list[bytes]
    seconds: float


def exchange(
    port: int,
    payload: bytes,
    *,
    answer: Callable[[bytes], bytes | None] = ok,
    half_close: bool | None = None,
) -> Exchange:
    """Send `payload`, answer each command like Asterisk, collect what the
    server sent until it closes. Half-closes after the payload when it holds
    no complete environment, so the server sees EOF instead of waiting."""
    if half_close is None:
        half_close = not (
            b"\n\n" in payload or b"\n\r\n" in payload or payload.startswith((b"\n", b"\r\n"))
        )
    started = time.monotonic()
    lines: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        buffer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"server stalled; got {lines!r} so far") from None
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                lines.append(line)
                reply = answer(line)
                if reply and not half_close:
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        sock.sendall(reply)
        assert buffer == b"", f"server sent a partial line {buffer!r}"
    return Exchange(lines, time.monotonic() - started)


def env(
    script: str | None = "test/echo",
    *args: str,
    channel: str | None = "PJSIP/agent-7-0000001a",
    extra: str = "",
) -> bytes:
    lines = ["agi_network: yes"]
    if script is not None:
        lines.append(f"agi_network_script: {script}")
    lines += [f"agi_request: agi://127.0.0.1:4573/{script}"]
    if channel is not None:
        lines.append(f"agi_channel: {channel}")
    lines += [
        "agi_language: en",
        "agi_type: PJSIP",
        "agi_uniqueid: 1732712345.42",
        "agi_version: 22.10.1",
        "agi_callerid: 48600100200",
        "agi_calleridname: Zażółć Gęślą",
        "agi_context: pbx-agents",
        "agi_extension: *21",
        "agi_priority: 1",
    ]
    lines += [f"agi_arg_{n}: {value}" for n, value in enumerate(args, start=1)]
    return ("\n".join(lines) + "\n" + extra + "\n").encode()


def refusal(result: Exchange) -> str:
    """The reason of a VERBOSE+HANGUP answer, as Asterisk reads it; fails if
    the answer is not one."""
    assert len(result.lines) >= 2, result.lines
    verbose, hangup = result.lines[-2:]
    assert hangup == b"HANGUP", result.lines
    assert verbose.startswith(b'VERBOSE "pbx-controller: '), verbose
    assert verbose.endswith(b'" 1'), verbose
    argv = asterisk_parse_args(verbose.decode())
    assert len(argv) == 3, argv
    return argv[1].removeprefix("pbx-controller: ")


def refusal_logs(agi: ServerThread, since: int) -> list[str]:
    return [r.getMessage() for r in agi.logs.records[since:] if "refused" in r.getMessage()]


# -- handled requests ---------------------------------------------------------------------------


def test_did_lookup_sets_tenant(agi: ServerThread) -> None:
    result = exchange(agi.port, env("did/lookup", "48221000001"))
    assert result.lines == [b'SET VARIABLE "PBX_TENANT" "acme"']


def test_did_lookup_unknown_did_sets_empty_tenant(agi: ServerThread) -> None:
    result = exchange(agi.port, env("did/lookup", "48999999999"))
    assert result.lines == [b'SET VARIABLE "PBX_TENANT" ""']


def test_values_are_quoted_for_asterisk(agi: ServerThread) -> None:
    result = exchange(agi.port, env("did/lookup", "48221000002"))
    assert result.lines == [rb'SET VARIABLE "PBX_TENANT" "quote \"and\" \\ backslash"']


@pytest.mark.parametrize(
    ("script", "args", "call", "code"),
    [
        ("agent/login", (), ("login", "agent-7"), "OK"),
        ("agent/logout", (), ("logout", "agent-7"), "OK"),
        ("agent/pause", ("lunch",), ("pause", "agent-7", "lunch"), "OK"),
        ("agent/pause", ("",), ("pause", "agent-7", ""), "REASON_REQUIRED"),
        ("agent/unpause", (), ("unpause", "agent-7"), "OK"),
    ],
)
def test_agent_feature_code_from_a_pjsip_phone(
    agi: ServerThread, script: str, args: tuple[str, ...], call: tuple[str, ...], code: str
) -> None:
    before = len(agi.agents.calls)
    result = exchange(agi.port, env(script, *args, channel="PJSIP/agent-7-0000001a"))
    assert result.lines == [f'SET VARIABLE "PBX_RESULT" "{code}"'.encode()]
    assert agi.agents.calls[before:] == [call]


def test_agent_feature_code_from_a_local_channel_is_an_error_result(agi: ServerThread) -> None:
    before = len(agi.agents.calls)
    result = exchange(agi.port, env("agent/login", channel="Local/*21@pbx-agents-00000003;2"))
    assert result.lines == [
        b'VERBOSE "pbx-controller: agent login needs a PJSIP phone, not '
        b'Local/*21@pbx-agents-00000003;2" 1',
        b'SET VARIABLE "PBX_RESULT" "NO_ENDPOINT"',
    ]
    assert agi.agents.calls[before:] == []


# -- refused requests: VERBOSE + HANGUP, a log line, and the server goes on ------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (env("nope/nothing"), "unknown AGI script 'nope/nothing'"),
        (env("agent/dance"), "agent/dance: unknown agent command 'agent/dance'"),
        (env(None), "no agi_network_script: the AGI URL has no script path"),
        (env("test/echo", channel=None), "no agi_channel in the AGI environment"),
        (env("did/lookup"), "did/lookup: argument 1 is missing"),
        (env("test/echo", extra="agi_arg_2: x\n"), "agi_arg_N numbering has a gap"),
        (env("test/fail"), "test/fail failed: RuntimeError"),
        (env("test/slow"), "test/slow took longer than 0.6s"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not an AGI environment line: b'GET / HTTP/1.1'"),
        (b"\x00\xff\xfe junk \x80\n\n", r"not an AGI environment line: b'\x00\xff\xfe junk \x80'"),
        (b"agi_channel: a\nagi_channel: b\n\n", "duplicate AGI environment key agi_channel"),
        (b"agi_arg_1: " + b"x" * 9000 + b"\n\n", "AGI environment line longer than 8192 bytes"),
        (
            b"".join(b"agi_x%d: y\n" % n for n in range(65)) + b"\n",
            "more than 64 AGI environment lines",
        ),
        (
            b"agi_network: yes\nagi_network_script: test/echo\n",
            "truncated AGI environment: closed after 2 lines",
        ),
        (b"agi_network: yes\nagi_chan", "truncated AGI environment: closed after 1 lines"),
        (b"", "connection closed before any AGI environment"),
    ],
    ids=[
        "unknown-script",
        "unknown-agent-command",
        "no-script",
        "no-channel",
        "missing-arg",
        "arg-gap",
        "handler-raises",
        "handler-too-slow",
        "http",
        "binary-junk",
        "duplicate-key",
        "overlong-line",
        "too-many-lines",
        "truncated",
        "truncated-mid-line",
        "empty",
    ],
)
def test_malformed_or_unknown_request_gets_verbose_and_hangup(
    agi: ServerThread, payload: bytes, reason: str
) -> None:
    logs_before = len(agi.logs.records)
    result = exchange(agi.port, payload)
    assert refusal(result) == reason
    [logged] = refusal_logs(agi, logs_before)
    assert logged.endswith(f": {reason}")
    # ...and the server keeps serving.
    assert exchange(agi.port, env("test/echo")).lines == [b'SET VARIABLE "PBX_FUZZ" "ok"']


def test_port_probe_is_answered_but_logged_quietly(agi: ServerThread) -> None:
    logs_before = len(agi.logs.records)
    refusal(exchange(agi.port, b""))
    [record] = [r for r in agi.logs.records[logs_before:] if "refused" in r.getMessage()]
    assert record.levelno == logging.INFO
    refusal(exchange(agi.port, b"agi_network: yes\n"))
    [record] = [r for r in agi.logs.records[logs_before + 1 :] if "refused" in r.getMessage()]
    assert record.levelno == logging.WARNING


def test_handler_exception_is_logged_with_traceback(agi: ServerThread) -> None:
    logs_before = len(agi.logs.records)
    refusal(exchange(agi.port, env("test/fail")))
    failures = [r for r in agi.logs.records[logs_before:] if r.exc_info]
    assert len(failures) == 1
    assert "handler for test/fail" in failures[0].getMessage()


def test_command_error_answer_from_asterisk_is_refused(agi: ServerThread) -> None:
    def asterisk(line: bytes) -> bytes:
        return b"510 Invalid or unknown command\n" if line.startswith(b"SET") else b"200 result=1\n"

    result = exchange(agi.port, env("test/echo"), answer=asterisk)
    assert result.lines[0] == b'SET VARIABLE "PBX_FUZZ" "ok"'
    assert refusal(result) == "test/echo: SET VARIABLE: 510 Invalid or unknown command"


def test_usage_answer_spanning_lines_is_one_error(agi: ServerThread) -> None:
    def asterisk(line: bytes) -> bytes:
        if line.startswith(b"SET"):
            return (
                b"520-Invalid command syntax.  Proper usage follows:\n"
                b" Usage: SET VARIABLE <variablename> <value>\n"
                b"520 End of proper usage.\n"
            )
        return b"200 result=1\n"

    result = exchange(agi.port, env("test/echo"), answer=asterisk)
    # The VERBOSE and HANGUP answers after the usage block are read in step.
    assert len(result.lines) == 3
    assert refusal(result).startswith("test/echo: SET VARIABLE: 520-Invalid command syntax.")


def test_dead_channel_is_refused_quietly(agi: ServerThread) -> None:
    def asterisk(line: bytes) -> bytes:
        return b"HANGUP\n511 Command Not Permitted on a dead channel or intercept routine\n"

    logs_before = len(agi.logs.records)
    result = exchange(agi.port, env("test/echo"), answer=asterisk)
    assert refusal(result).startswith("SET VARIABLE: channel hung up")
    [record] = [r for r in agi.logs.records[logs_before:] if "refused" in r.getMessage()]
    assert record.levelno == logging.INFO


def test_silent_asterisk_times_out_and_gets_the_answer_unchecked(agi: ServerThread) -> None:
    result = exchange(agi.port, env("test/echo"), answer=lambda _line: None)
    assert result.lines[0] == b'SET VARIABLE "PBX_FUZZ" "ok"'
    assert refusal(result) == "test/echo: SET VARIABLE: no answer within 0.3s"
    assert result.seconds < LIMITS.command_timeout_s + LIMITS.linger_s + 1


def test_handler_cancelled_mid_command_answers_without_waiting(agi: ServerThread) -> None:
    # The EXEC's answer never comes; the handler deadline cancels it. The
    # conversation is out of step, so the answer goes out unchecked.
    result = exchange(agi.port, env("test/wait"), answer=lambda _line: None)
    assert result.lines[0] == b'EXEC "Wait" "30"'
    assert refusal(result) == "test/wait took longer than 0.6s"
    assert result.seconds < LIMITS.handler_timeout_s + LIMITS.refuse_timeout_s


def test_stalled_peer_does_not_stall_the_server(agi: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", agi.port), timeout=5) as stalled:
        stalled.sendall(b"agi_network: yes\nagi_network_scr")  # ...and nothing more
        started = time.monotonic()
        # Others are served while it stalls.
        for _ in range(3):
            assert exchange(agi.port, env("test/echo")).lines == [b'SET VARIABLE "PBX_FUZZ" "ok"']
        if time.monotonic() - started < LIMITS.env_timeout_s / 2:
            stalled.setblocking(False)
            with pytest.raises(BlockingIOError):
                stalled.recv(1)  # not answered yet: its deadline has not passed
            stalled.setblocking(True)
        answer = b""
        while chunk := stalled.recv(4096):
            answer += chunk
    assert (
        answer == b'VERBOSE "pbx-controller: no complete AGI environment within 0.3s" 1\nHANGUP\n'
    )


def test_slow_drip_is_bounded_by_one_deadline(agi: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", agi.port), timeout=5) as sock:
        started = time.monotonic()
        # A valid line every 0.1 s would never trip a per-line timeout.
        for n in range(5):
            sock.sendall(b"agi_x%d: y\n" % n)
            time.sleep(0.1)  # the slow peer under test, not a wait for the server
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b'VERBOSE "pbx-controller: no complete AGI environment')
    assert time.monotonic() - started < 2


# -- the fuzz: whatever arrives, the contract holds --------------------------------------------

_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)
_KEYS = st.sampled_from(
    [
        "agi_network",
        "agi_network_script",
        "agi_request",
        "agi_channel",
        "agi_uniqueid",
        "agi_callerid",
        "agi_calleridname",
        "agi_context",
        "agi_extension",
        "agi_priority",
        "agi_arg_1",
        "agi_arg_2",
        "agi_arg_3",
        "agi_arg_0",
        "agi_arg_x",
        "AGI_CHANNEL",
        "agi",
    ]
)
_VALUES = st.one_of(
    _TEXT,
    st.sampled_from(
        [
            "test/echo",
            "did/lookup",
            "agent/login",
            "agent/pause",
            "agent/bogus",
            "nope",
            "/test/echo/",
            "test/echo?x=1",
            "PJSIP/agent1-0000000a",
            "Local/*21@pbx-agents-00000001;2",
            "48221000001",
            "",
        ]
    ),
)
_LINE = st.one_of(
    st.builds(lambda k, v: f"{k}: {v}".encode(), _KEYS, _VALUES),
    st.builds(lambda k, v: f"{k}:{v}".encode(), _KEYS, _VALUES),
    st.binary(max_size=40),
    st.builds(lambda n: b"agi_arg_1: " + b"x" * n, st.integers(8100, 8300)),
)
_STRUCTURED = st.builds(
    lambda lines, end, tail: b"\n".join(lines) + end + tail,
    st.lists(_LINE, max_size=14),
    st.sampled_from([b"\n\n", b"\r\n\r\n", b"\n", b""]),
    st.one_of(
        st.just(b""),
        st.binary(max_size=24),
        st.sampled_from([b"HANGUP\n", b"200 result=1\n", b"511 dead\n", b"520-x\n"]),
    ),
)
_MUTATED = st.builds(
    lambda payload, cut, junk: payload[:cut] + junk + payload[cut:],
    st.sampled_from(
        [
            env("test/echo"),
            env("did/lookup", "48221000001"),
            env("agent/pause", "lunch"),
            env("nope"),
        ]
    ),
    st.integers(0, 400),
    st.binary(max_size=8),
)
PAYLOADS = st.one_of(st.binary(max_size=600), _STRUCTURED, _MUTATED)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(payload=PAYLOADS)
def test_fuzz_either_handled_or_verbose_and_hangup(agi: ServerThread, payload: bytes) -> None:
    handled, refused = agi.outcomes
    logs_before = len(agi.logs.records)
    result = exchange(agi.port, payload)
    # Exactly one outcome per connection, and it matches what was answered.
    now_handled, now_refused = agi.outcomes
    assert (now_handled - handled, now_refused - refused) in ((1, 0), (0, 1))
    for line in result.lines:
        verb = line.split(b" ", 1)[0]
        assert verb in (b"SET", b"VERBOSE", b"HANGUP"), result.lines
    if now_refused > refused:
        reason = refusal(result)
        event(f"refused: {reason.split(':')[0][:40]}")
        assert len(refusal_logs(agi, logs_before)) == 1
    else:
        event("handled")
        assert b"HANGUP" not in result.lines
    errors = [r for r in agi.logs.records[logs_before:] if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


def test_server_still_serves_after_the_fuzz(agi: ServerThread) -> None:
    assert exchange(agi.port, env("test/echo")).lines == [b'SET VARIABLE "PBX_FUZZ" "ok"']
    assert agi.loop_errors == []


# -- the pure pieces ---------------------------------------------------------------------------


def asterisk_parse_args(line: str) -> list[str]:
    """res_agi.c parse_args(), transcribed: how Asterisk splits our command."""
    argv: list[str] = []
    current: list[str] | None = None
    quoted = escaped = False
    for ch in line:
        if ch == '"' and not escaped:
            quoted = not quoted
            if quoted and current is None:
                current = []
                argv.append("")
            continue
        if ch in " \t" and not quoted and not escaped:
            if current is not None:
                argv[-1] = "".join(current)
            current = None
            continue
        if ch == "\\" and not escaped:
            escaped = True
            continue
        if current is None:
            current = []
            argv.append("")
        current.append(ch)
        escaped = False
    if current is not None:
        argv[-1] = "".join(current)
    return argv


@given(
    name=_TEXT.filter(lambda t: not any(c in t for c in "\r\n\x00")),
    value=_TEXT.filter(lambda t: not any(c in t for c in "\r\n\x00")),
)
def test_quoting_round_trips_through_asterisks_parser(name: str, value: str) -> None:
    assert asterisk_parse_args(command_line("SET VARIABLE", name, value)) == [
        "SET",
        "VARIABLE",
        name,
        value,
    ]


@pytest.mark.parametrize("bad", ["a\nHANGUP", "a\rb", "nul\x00"])
def test_arguments_that_would_split_the_command_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="NUL, CR or LF"):
        quote_arg(bad)


def test_overlong_command_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="longer than 2047"):
        command_line("SET VARIABLE", "X", "y" * 2040)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("200 result=1", AgiResponse(200, "1", None, "200 result=1")),
        ("200 result=1 (acme)", AgiResponse(200, "1", "acme", "200 result=1 (acme)")),
        ("200 result=1 (a (b) c)", AgiResponse(200, "1", "a (b) c", "200 result=1 (a (b) c)")),
        (
            "200 result=0 (timeout) endpos=80",
            AgiResponse(200, "0", "timeout", "200 result=0 (timeout) endpos=80"),
        ),
        ("200 result= (timeout)", AgiResponse(200, "", "timeout", "200 result= (timeout)")),
        ("200 result=0 endpos=8000", AgiResponse(200, "0", None, "200 result=0 endpos=8000")),
        (
            "510 Invalid or unknown command",
            AgiResponse(510, "", None, "510 Invalid or unknown command"),
        ),
    ],
)
def test_parse_response(line: str, expected: AgiResponse) -> None:
    assert parse_response(line) == expected


@pytest.mark.parametrize("line", ["", "HELLO", "200", "200 ok", "99 result=1", "2000 result=1"])
def test_parse_response_rejects_what_is_not_agi(line: str) -> None:
    with pytest.raises(AgiConnectionError):
        parse_response(line)


@pytest.mark.parametrize(
    ("channel", "endpoint"),
    [
        ("PJSIP/agent1-0000000a", "agent1"),
        ("PJSIP/agent-7-0000001a", "agent-7"),
        ("PJSIP/pstn-00000000", "pstn"),
        ("Local/*21@pbx-agents-00000003;2", None),
        ("Local/*21@pbx-agents-00000003;1", None),
        ("SIP/agent1-0000000a", None),
        ("PJSIP/agent1", None),
        ("", None),
    ],
)
def test_endpoint_from_channel(channel: str, endpoint: str | None) -> None:
    assert endpoint_from_channel(channel) == endpoint


def test_router_exact_beats_group_and_handlers_must_be_async() -> None:
    router = AgiRouter()

    async def a(request: AgiRequest) -> None: ...
    async def b(request: AgiRequest) -> None: ...

    router.add("agent/*", a)
    router.add("agent/login", b)
    assert router.resolve("agent/login") is b
    assert router.resolve("agent/pause") is a
    assert router.resolve("agent/") is None
    assert router.resolve("agents/x") is None
    assert router.paths == ["agent/*", "agent/login"]
    with pytest.raises(ValueError, match="already taken"):
        router.add("agent/login", b)
    with pytest.raises(TypeError, match="async def"):
        router.add("sync", lambda request: None)  # type: ignore[arg-type, return-value]


# -- life cycle, in the test's own loop ---------------------------------------------------------


async def test_too_many_sessions_are_refused_and_close_cancels_the_rest() -> None:
    entered = asyncio.Event()

    async def hold(request: AgiRequest) -> None:
        entered.set()
        await asyncio.sleep(30)

    router = AgiRouter()
    router.add("test/hold", hold)
    server = AgiServer(router, port=0, limits=AgiLimits(max_sessions=1))
    await server.start()
    try:
        async with asyncio.timeout(5):
            reader1, writer1 = await asyncio.open_connection("127.0.0.1", server.port)
            writer1.write(env("test/hold"))
            await entered.wait()
            reader2, writer2 = await asyncio.open_connection("127.0.0.1", server.port)
            answer = await reader2.read()
            assert answer == (
                b'VERBOSE "pbx-controller: too many concurrent AGI sessions" 1\nHANGUP\n'
            )
            writer2.close()
            await writer2.wait_closed()
    finally:
        async with asyncio.timeout(5):
            await server.close(grace_s=0.1)
    async with asyncio.timeout(5):
        assert await reader1.read() == b""  # the held session was closed, not leaked
    writer1.close()
    await writer1.wait_closed()
