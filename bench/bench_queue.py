"""Queue connect latency and CPU: pbx-controller against app_queue, on one
sandbox Asterisk, under the same call load.

`make bench` runs it; `python bench/run.py queue` runs it alone. About
5-6 minutes on 2 cores. It prints a table and ends with one JSON line.

The load, the same for both sides: a scheduled generator (call n leaves at
n / rate, however long earlier requests took) originates Local-channel
callers over ARI; each caller's own half waits silent in a separate
"bench-callers" Stasis app ([pbx-bench-caller]), its other half is the call
under test. Agents are 50 Local channels `Local/<n>@pbx-bench-agent`
(dialplan/pbx-bench.conf) that answer at once, talk for BENCH_TALK seconds
under an absolute timeout and hang up: the agent side ends each call.

- app_queue: callers run [pbx-bench-queue] (the prelude of [pbx-inbound],
  answered, the controller's 20 ms greeting, then `Queue(bench)` with hold
  music: served as the controller serves them); the `bench` queue of
  queues.conf (leastrecent, ringinuse=no, wrapuptime=0, 15 s ring) gets the
  agents as dynamic members (AMI QueueAdd) for its phase only.
- pbx-controller: callers run [pbx-inbound] with the bench DID. The
  controller is a separate process (`bench_queue.py --controller`) that does
  what `pbxctl serve` does - migrate a fresh SQLite database, apply the
  configuration as `pbxctl config apply` would, load it back, open the CDR
  outbox and the agent-state log, start the controller with its FastAGI and
  AMI parts - and then logs the agents in through `agent_command` (the
  feature-code path needs PJSIP phones). Its queue: longest idle, no
  wrap-up, 15 s ring, no announcements. Hold music only once an agent has
  rung for 300 ms (the engine's HOLD_MUSIC_GRACE_MS): the bench's agents
  answer within it, so its callers hear none, where app_queue starts the
  music at queue entry and stops it at the bridge. Its greeting is 20 ms of silence:
  an empty greeting is not allowed (the config file rejects it; the engine
  would send a Play without media).
- Each side runs alone: no controller process (its AMI session costs
  Asterisk CPU) during app_queue's runs, no queue members during the
  controller's. Main runs first, capacity searches after.

Connect latency, the same interval on both sides, from queue entry until the
agent's leg is answered and bridged with the caller. Every stamp is
wall-clock (CLOCK_REALTIME, microseconds):

- end, both sides: the second channel's `BridgeEnter` into the caller's
  bridge, by the `Timestamp` Asterisk puts on the AMI event (this script
  renders its Asterisk with `timestampevents = yes`);
- start, app_queue: the caller's `QueueCallerJoin`, by its AMI `Timestamp`;
- start, controller: the engine enqueueing the caller (the dispatcher's
  handling of the greeting's PlaybackFinished, stamped in the controller
  process as `engine.handle` returns).

Asterisk stamps an AMI event when its manager formats it, a little after
the fact: app_queue's two stamps carry that delay alike, the controller's
interval carries it once, so it is never flattered. Also shown: the
controller's own view (until its Bridge request returned) and a step-by-step
breakdown of its interval (ARI event stamps there have 1 ms resolution).

CPU seconds per 100 calls, from /proc/<pid>/stat (all threads), from the
first originate until the last channel is gone (and, for the controller,
every CDR is in its database): Asterisk for app_queue; Asterisk plus the
controller process for pbx-controller. This script's own CPU (generator,
AMI observer) and the rest of the machine (other processes share the
cores) are shown apart.

Rounds: the main run is repeated BENCH_ROUNDS times (5), app_queue and the
controller in turn, and each side reports the median round's CPU with the
latencies of all its rounds pooled. On this shared 2-core machine two
identical runs back to back differed by a quarter (1.26 and 1.57 s per 100
calls): one run per side compared noise as much as the two designs. Each
round's figures are printed, and listed in the JSON line.

Offered rate: measured, (entries - 1) / (last - first queue entry), not the
nominal rate. Lost: a call not bridged to an agent (for the controller, also
one without exactly one CDR saying `answered`).

Capacity: with 0.3 s of talk each side steps through BENCH_RATES until p99
reaches 50 ms or a call is lost; it reports the highest offered rate below
that, and the step past the knee. A step past the limit is run once more
(a single disturbance of this shared box is not a knee); a step that held
the second time counts as held, and both attempts are printed and listed
in the JSON line. A step that falls a second behind (more
calls sent than bridged by a second's worth) stops sending: past the knee
both sides fall behind by whole seconds, and what they leave would spoil
the next step. The agents bound it too: 50 agents talking 0.3 s serve at
most ~166 calls/s, so the default steps stop at 140.

Environment: BENCH_CALLS (300), BENCH_ROUNDS (5), BENCH_RATE (25), BENCH_TALK_S (1.0),
BENCH_AGENTS (50), BENCH_RATES ("40,50,60,70,80,90,100,120,140,160,200"; empty: no capacity
search), BENCH_CAPACITY_CALLS (300), BENCH_WARMUP_CALLS (20), BENCH_KEEP=1
keeps the controller's log and database. Diagnostics only:
BENCH_BASELINE=PATH (the controller of another checkout at PATH, e.g. a
`git worktree` of main, runs as a third side in every round: an A/B;
BENCH_BASELINE_ENV="K=V ..." is set for that side only, so a checkout can
also be compared with itself under other settings),
BENCH_CPROFILE=PATH (the controller process under cProfile, its stats in
PATH.<pid>), BENCH_STORE=memory (no database writes in the controller;
"no-cdr-db": the CDR outbox's files but no upsert; "no-agent-log"),
BENCH_LINGER_S (how long the CDR outbox and the agent log gather rows
before a database write; their own default otherwise),
PBX_AMI__ENABLED=false (no AMI part).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

CALLS = int(os.environ.get("BENCH_CALLS", "300"))
ROUNDS = max(1, int(os.environ.get("BENCH_ROUNDS", "5")))
RATE = float(os.environ.get("BENCH_RATE", "25"))
TALK_S = float(os.environ.get("BENCH_TALK_S", "1.0"))
AGENTS = int(os.environ.get("BENCH_AGENTS", "50"))
RATES = os.environ.get("BENCH_RATES", "40,50,60,70,80,90,100,120,140,160,200")
CAPACITY_RATES = [float(r) for r in RATES.split(",") if r.strip()]
CAPACITY_CALLS = int(os.environ.get("BENCH_CAPACITY_CALLS", "300"))
CAPACITY_TALK_S = 0.3
P99_LIMIT_MS = 50.0
WARMUP_CALLS = int(os.environ.get("BENCH_WARMUP_CALLS", "20"))
KEEP = os.environ.get("BENCH_KEEP") == "1"

DID = "5550100"
QUEUE = "bench"
FIRST_AGENT = 1000  # agent n is Local/<FIRST_AGENT + n>@pbx-bench-agent
AGENT_CONTEXT = "pbx-bench-agent"
CALLER_APP = "bench-callers"
CALLER_TIMEOUT_S = 20  # a caller nobody answers gives up after this
CALLER_FORMAT = "ulaw"  # the callers' codec (see Bench.originate)
DRAIN_TIMEOUT_S = 30.0  # after the last originate, the run must be over by then
GREETING_MS = 20

SCRIPT = Path(__file__).resolve()
APPQUEUE = "app_queue"
CONTROLLER = "controller"
BASELINE_SIDE = "baseline"
# Diagnostics: another checkout's controller as a third side in every round
# (an A/B of a change under the same load and the same box noise).
_BASELINE_PATH = os.environ.get("BENCH_BASELINE")
BASELINE = Path(_BASELINE_PATH).resolve() if _BASELINE_PATH else None


def baseline_env() -> dict[str, str]:
    """The baseline side's environment: its checkout first on the path, and
    BENCH_BASELINE_ENV ("K=V K=V") on top (a variant of the same code)."""
    env = {"PYTHONPATH": str(BASELINE)}
    for pair in os.environ.get("BENCH_BASELINE_ENV", "").split():
        key, _, value = pair.partition("=")
        env[key] = value
    return env


# -- measuring -----------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process and all its threads, from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU time of the whole machine that was not idle, from /proc/stat."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ari_time(stamp: str | None) -> float | None:
    """An ARI event's `timestamp` (millisecond resolution) as epoch seconds."""
    if not stamp:
        return None
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    except ValueError:
        return None


def agent_numbers() -> list[int]:
    return [FIRST_AGENT + n for n in range(AGENTS)]


def agent_endpoint(number: int) -> str:
    return f"Local/{number}@{AGENT_CONTEXT}"


@dataclass
class Cpu:
    asterisk: float
    controller: float
    bench: float
    machine: float

    @property
    def other(self) -> float:
        """The rest of the machine: other processes sharing the cores."""
        return self.machine - self.asterisk - self.controller - self.bench

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(
            self.asterisk - other.asterisk,
            self.controller - other.controller,
            self.bench - other.bench,
            self.machine - other.machine,
        )

    def scaled(self, factor: float) -> Cpu:
        return Cpu(
            self.asterisk * factor,
            self.controller * factor,
            self.bench * factor,
            self.machine * factor,
        )


@dataclass
class Run:
    side: str
    label: str
    calls: int
    nominal_rate: float
    talk_s: float
    offered_rate: float = 0.0  # from the queue entries
    sent_rate: float = 0.0  # from the generator's requests
    connects_ms: list[float] = field(default_factory=list)
    own_view_ms: list[float] = field(default_factory=list)  # controller: until Bridge returned
    breakdown: dict[str, list[float]] = field(default_factory=dict)
    lost: int = 0
    failed_originates: int = 0
    cdr_problems: int = 0
    talk_ms: list[int] = field(default_factory=list)  # controller: from its CDRs
    traffic: list[float] = field(default_factory=list)  # controller, per call: see Probe
    cpu: Cpu | None = None
    seconds: float = 0.0
    timed_out: bool = False
    aborted: bool = False  # stopped sending: a second or more behind
    sent: int = 0

    def p(self, q: float) -> float | None:
        return round(percentile(self.connects_ms, q), 2) if self.connects_ms else None

    @property
    def p50(self) -> float | None:
        return round(statistics.median(self.connects_ms), 2) if self.connects_ms else None

    @property
    def p99(self) -> float | None:
        return self.p(0.99)

    def per_100(self, seconds: float) -> float:
        return round(seconds * 100 / (self.sent or self.calls), 3)

    @property
    def total_cpu_per_100(self) -> float:
        assert self.cpu is not None
        return self.per_100(self.cpu.asterisk + self.cpu.controller)


def merged(runs: list[Run]) -> Run:
    """One side's rounds as one run: every call's latency pooled, losses
    summed, and the CPU of the median round (by total CPU per call)."""
    first = runs[0]
    out = Run(
        first.side,
        "median" if len(runs) > 1 else first.label,
        sum(r.calls for r in runs),
        first.nominal_rate,
        first.talk_s,
    )
    out.sent = sum(r.sent for r in runs)
    out.offered_rate = statistics.median(r.offered_rate for r in runs)
    out.sent_rate = statistics.median(r.sent_rate for r in runs)
    for r in runs:
        out.connects_ms += r.connects_ms
        out.own_view_ms += r.own_view_ms
        out.talk_ms += r.talk_ms
        out.lost += r.lost
        out.failed_originates += r.failed_originates
        out.cdr_problems += r.cdr_problems
        out.seconds += r.seconds
        out.timed_out |= r.timed_out
        out.aborted |= r.aborted
        for key, values in r.breakdown.items():
            out.breakdown.setdefault(key, []).extend(values)
    if all(r.traffic for r in runs):
        out.traffic = [
            statistics.median(values) for values in zip(*(r.traffic for r in runs), strict=True)
        ]
    middle = sorted(runs, key=lambda r: r.total_cpu_per_100)[(len(runs) - 1) // 2]
    assert middle.cpu is not None
    out.cpu = middle.cpu.scaled(out.sent / (middle.sent or middle.calls))
    return out


# -- the controller process -------------------------------------------------------------


def controller_toml(greeting: str) -> str:
    """The bench tenant, DID, queue and agents, as `pbxctl config apply` takes them."""
    lines = [
        "[tenants.bench]",
        'name = "Bench"',
        f'greeting = ["{greeting}"]',
        # No consent prompt (opt_in is the default since migration 0002): the
        # bench callers press nothing, and app_queue asks nothing either.
        'consent_policy = "off"',
        "",
        "[[tenants.bench.dids]]",
        f'number = "{DID}"',
        f'queue = "{QUEUE}"',
        "",
        f"[queues.{QUEUE}]",
        'tenant = "bench"',
        'strategy = "longest_idle"',
        "ring_timeout_s = 15",
        "wrapup_s = 0",
        "",
        f"[queues.{QUEUE}.announcements]",
        "position = false",
        "estimated_wait = false",
        "",
    ]
    for number in agent_numbers():
        lines += [
            f"[agents.bench-{number}]",
            f'name = "Bench agent {number}"',
            f'endpoint = "{agent_endpoint(number)}"',
            f'queues = ["{QUEUE}"]',
            "",
        ]
    return "\n".join(lines)


class Probe:
    """Timestamps inside the controller process, keyed by the caller's channel.
    Cheap on purpose: a dict store per event of interest."""

    def __init__(self, controller: Any) -> None:
        from pbx_controller.core import actions as a
        from pbx_controller.core import events as e

        self._a, self._e = a, e
        self._ari = controller.ari  # its own counters: no wrapper per request
        self.reset()
        controller.observers.append(self.observe)
        inbox = controller.inbox
        put = inbox.put_nowait

        def put_nowait(item: Any) -> None:
            if isinstance(item, dict):
                kind = item.get("type")
                if kind == "PlaybackFinished":
                    target = str(item.get("playback", {}).get("target_uri", ""))
                    self.greeting_end[target.removeprefix("channel:")] = (
                        time.time(),
                        item.get("timestamp"),
                    )
                elif kind == "StasisStart" and (item.get("args") or [""])[0] == "agent":
                    self.leg_start[item["channel"]["id"]] = (time.time(), item.get("timestamp"))
            put(item)

        inbox.put_nowait = put_nowait  # the ARI reader and the executor both feed it
        ari = controller.ari
        add_to_bridge = ari.add_to_bridge
        send: Callable[[Any, Callable[[Any], None]], bool] = ari.send

        async def timed_add_to_bridge(bridge_id: str, channel_ids: Iterable[str]) -> None:
            channel_ids = tuple(channel_ids)
            await add_to_bridge(bridge_id, channel_ids)
            self.bridged[channel_ids[0]] = time.time()

        def timed_send(call: Any, done: Callable[[Any], None]) -> bool:
            # A pipelined Bridge: stamped when its answer is handled.
            if not call.path.endswith("/addChannel"):
                return send(call, done)
            caller = str(call.params["channel"]).split(",")[0]

            def timed_done(error: Any) -> None:
                self.bridged[caller] = time.time()
                done(error)

            return send(call, timed_done)

        ari.add_to_bridge = timed_add_to_bridge  # the lane's Bridge (REST over HTTP)
        ari.send = timed_send
        from pbx_controller.asterisk import ami

        dispatch = ami._Manager.dispatch

        def counted_dispatch(manager: Any, event: Any) -> Any:
            self.ami_events += 1
            return dispatch(manager, event)

        ami._Manager.dispatch = counted_dispatch  # every AMI event panoramisk parsed

    def reset(self) -> None:
        self.greeting_end: dict[str, tuple[float, str | None]] = {}
        self.enqueued: dict[str, float] = {}
        self.leg_start: dict[str, tuple[float, str | None]] = {}
        self.leg_handled: dict[str, tuple[float, str, str]] = {}  # caller -> (t, leg, call id)
        self.bridged: dict[str, float] = {}
        self.cdrs: list[tuple[str, str, int]] = []  # call id, disposition, talk ms
        self.ami_events = 0
        self.counted_from = (self._ari.requests_sent, self._ari.events_received)

    def observe(self, event: Any, actions: list[Any]) -> None:
        now = time.time()
        a, e = self._a, self._e
        if isinstance(event, e.PlaybackFinished):
            # The greeting's end queues the caller: hold music at once, or
            # (an agent rings already) the hold music's grace timer.
            if any(
                isinstance(x, a.StartMoh)
                or (isinstance(x, a.StartTimer) and "/hold/" in x.timer_id)
                for x in actions
            ):
                self.enqueued[event.channel_id] = now
        elif isinstance(event, e.AgentLegAnswered):
            for action in actions:
                if isinstance(action, a.Bridge):
                    caller, leg = action.channel_ids
                    self.leg_handled[caller] = (now, leg, action.bridge_id.removesuffix("-bridge"))

    def collect(self) -> dict[str, Any]:
        calls = {}
        for caller, enqueued in self.enqueued.items():
            record: dict[str, Any] = {"enqueued": enqueued}
            if caller in self.greeting_end:
                record["greeting_recv"], record["greeting_ast"] = self.greeting_end[caller]
            if caller in self.leg_handled:
                handled, leg, call_id = self.leg_handled[caller]
                record.update(leg_handled=handled, call_id=call_id)
                if leg in self.leg_start:
                    record["leg_recv"], record["leg_ast"] = self.leg_start[leg]
            if caller in self.bridged:
                record["bridged"] = self.bridged[caller]
            calls[caller] = record
        result = {
            "calls": calls,
            "cdrs": self.cdrs,
            "traffic": [
                self._ari.requests_sent - self.counted_from[0],
                self._ari.events_received - self.counted_from[1],
                self.ami_events,
            ],
        }
        self.reset()
        return result


class CountingCdrSink:
    """The outbox, with a note of each CDR for the bench's lost-call check."""

    def __init__(self, outbox: Any, probe: Callable[[], Probe | None]) -> None:
        self.outbox = outbox
        self.probe = probe
        self.written = 0

    def write(self, cdr: Any) -> None:
        self.outbox.write(cdr)
        self.written += 1
        probe = self.probe()
        if probe is not None:
            probe.cdrs.append((cdr.call_id, cdr.disposition.value, cdr.talk_ms))


class MemoryStore:
    """BENCH_STORE=memory (diagnostics only): CDRs and agent states kept in
    memory, to tell the database's share of the controller's CPU."""

    def __init__(self) -> None:
        self.records: list[Any] = []

    def write(self, record: Any) -> None:
        self.records.append(record)

    async def write_many(self, records: list[Any]) -> None:
        self.records.extend(records)

    def caught_up(self) -> bool:
        return True

    async def close(self, flush_timeout_s: float = 0) -> None:
        pass


class MemoryAgentLog(MemoryStore):
    """The agent-state log's side of BENCH_STORE=memory: rows are taken at once."""


async def controller_child() -> None:
    """`bench_queue.py --controller`: pbxctl serve's start-up, on SQLite, with
    the bench configuration; then commands on stdin, answers on stdout."""
    # Anything printed by a library goes to the log, not into the protocol.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    from pbx_controller import configfile
    from pbx_controller.config import load_settings
    from pbx_controller.logs import setup_logging
    from pbx_controller.service import Controller, freeze_startup_heap
    from pbx_controller.store.agent_log import DatabaseAgentLog
    from pbx_controller.store.cdr_writer import DatabaseCdrSink
    from pbx_controller.store.config_store import apply_config
    from pbx_controller.store.db import make_engine, make_sessionmaker, upgrade_to_head
    from pbx_controller.store.directory import load_directory
    from pbx_controller.store.outbox import CdrOutbox

    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    url = settings.database.url.get_secret_value()
    await upgrade_to_head(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    await apply_config(sessions, configfile.parse(os.environ["BENCH_CONTROLLER_TOML"]))
    directory = await load_directory(sessions)
    outbox: Any
    agent_log: Any
    store = os.environ.get("BENCH_STORE", "")
    if store == "memory":  # diagnostics: no database writes
        outbox, agent_log = MemoryStore(), MemoryAgentLog()
    else:  # as pbxctl serve: the durable outbox in front of the database, the state log
        # Diagnostics: "no-cdr-db" (the outbox's files, no upsert), "no-agent-log".
        cdr_sink: Any = MemoryStore() if store == "no-cdr-db" else DatabaseCdrSink(sessions)
        linger = (
            {"linger_s": float(os.environ["BENCH_LINGER_S"])}
            if "BENCH_LINGER_S" in os.environ
            else {}
        )
        outbox = CdrOutbox(settings.data_dir / "outbox", cdr_sink, database_url=url, **linger)
        await outbox.open()
        if store == "no-agent-log":
            agent_log = MemoryAgentLog()
        else:
            agent_log = DatabaseAgentLog(sessions, **linger)
            agent_log.start()
        outbox.start()
    probe: Probe | None = None
    sink = CountingCdrSink(outbox, lambda: probe)
    controller = Controller(settings, directory, sink, agent_log=agent_log)
    probe = Probe(controller)
    await controller.start()
    results = {
        agent_id: controller.agent_command(agent_id, "login") for agent_id in directory.agents
    }
    bad = {k: v for k, v in results.items() if v != "OK"}

    def answer(message: dict[str, Any]) -> None:
        protocol.write(json.dumps(message) + "\n")

    freeze_startup_heap()  # as pbxctl serve does once started
    answer({"ready": not bad, "agents": len(results), "refused": bad})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := (await reader.readline()).decode().strip():
            if line == "count":
                answer({"cdrs": sink.written, "caught_up": outbox.caught_up()})
            elif line == "collect":
                answer(probe.collect())
            elif line == "quit":
                break
    finally:
        await controller.stop()
        await agent_log.close(flush_timeout_s=5)
        await outbox.close(flush_timeout_s=5)
        await engine.dispose()


class ControllerProcess:
    """The parent's handle on `bench_queue.py --controller`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / "controller.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, env: dict[str, str], script: Path = SCRIPT) -> None:
        with self._open_log() as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(script),
                "--controller",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=env,
                limit=64 << 20,
            )
        async with asyncio.timeout(60):
            hello = await self._read()
        if not hello.get("ready"):
            raise RuntimeError(f"the controller did not log its agents in: {hello}")

    def _open_log(self) -> Any:
        return open(self.log_path, "ab")  # closed by the caller's with

    async def _read(self) -> dict[str, Any]:
        assert self.process is not None
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the controller process ended; see {self.log_path}")
        result: dict[str, Any] = json.loads(line)
        return result

    async def ask(self, command: str) -> dict[str, Any]:
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.write(f"{command}\n".encode())
        await self.process.stdin.drain()
        async with asyncio.timeout(30):
            return await self._read()

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            assert process.stdin is not None
            process.stdin.write(b"quit\n")
            await process.stdin.drain()
            process.stdin.close()
        try:
            async with asyncio.timeout(20):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


# -- the bench ---------------------------------------------------------------------------


def bench_asterisk_class() -> type:
    from pbx_controller.sandbox.asterisk import SandboxAsterisk

    class BenchAsterisk(SandboxAsterisk):
        """The sandbox Asterisk, with AMI event timestamps and a 20 ms greeting."""

        def render(self) -> None:
            super().render()
            manager = self.host("etc/manager.conf")
            text = manager.read_text()
            manager.write_text(text.replace("[general]\n", "[general]\ntimestampevents = yes\n", 1))
            sounds = self.host("bench")
            sounds.mkdir(exist_ok=True)
            # Signed linear, 8 kHz: 16 bytes a millisecond of silence.
            (sounds / "greeting.sln").write_bytes(b"\0" * 16 * GREETING_MS)
            # app_queue's callers hear the same greeting ([pbx-bench-queue]).
            extensions = self.host("etc/extensions.conf")
            text = extensions.read_text()
            greeting = self.inner("bench/greeting")
            extensions.write_text(
                text.replace("[globals]\n", f"[globals]\nBENCH_GREETING = {greeting}\n", 1)
            )

        @property
        def greeting(self) -> str:
            return "sound:" + self.inner("bench/greeting")

    return BenchAsterisk


class BenchAri:
    """The load generator's few ARI requests, on a small connection pool of
    its own (Asterisk serves each HTTP connection with a thread, and refuses
    sessions past http.conf's sessionlimit, 100 by default)."""

    def __init__(self, url: str, username: str, password: str) -> None:
        self.url = url.rstrip("/")
        self.session = aiohttp.ClientSession(
            headers={"Authorization": aiohttp.encode_basic_auth(username, password)},
            timeout=aiohttp.ClientTimeout(total=CALLER_TIMEOUT_S),
            connector=aiohttp.TCPConnector(limit=8),
        )

    async def request(
        self, method: str, path: str, params: dict[str, Any] | None = None, timeout_s: float = 5
    ) -> Any:
        query = {k: str(v) for k, v in (params or {}).items()}
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with self.session.request(
            method, self.url + path, params=query, timeout=timeout
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise RuntimeError(f"ARI {method} {path}: {response.status} {text[:200]}")
            return json.loads(text) if text else None

    async def close(self) -> None:
        await self.session.close()


class Bench:
    def __init__(self, asterisk: Any, workdir: Path) -> None:
        self.asterisk = asterisk
        self.workdir = workdir
        self.controller: ControllerProcess | None = None
        self.runs = 0
        self.joins: dict[str, float] = {}
        self.bridges: dict[str, list[str]] = {}
        self.connected: dict[str, float] = {}
        self.connects = 0

    # set-up ---------------------------------------------------------------------------

    async def open(self) -> None:
        from pbx_controller.asterisk.ami import AmiClient
        from pbx_controller.sandbox.asterisk import controller_settings

        settings = controller_settings(self.asterisk)
        self.ari = BenchAri(
            settings.ari.url, settings.ari.username, settings.ari.password.get_secret_value()
        )
        self.ami = AmiClient(settings.ami)
        await self.ami.connect()
        self.ami.subscribe("QueueCallerJoin", self._on_join)
        self.ami.subscribe("BridgeEnter", self._on_bridge_enter)
        # Only these reach this session: the rest of the AMI stream is not parsed here.
        for event in ("QueueCallerJoin", "BridgeEnter"):
            await self.ami.action(
                {"Action": "Filter", "Operation": "Add", "Filter": f"Event: {event}"}
            )
        self._app_ready = asyncio.Event()
        self._app = asyncio.create_task(self._hold_caller_app())
        async with asyncio.timeout(10):
            await self._app_ready.wait()

    async def _hold_caller_app(self) -> None:
        """Keep the callers' Stasis app registered; its few events (the
        callers' own halves entering and leaving) are read and dropped."""
        url = self.ari.url.replace("http", "ws", 1) + f"/events?app={CALLER_APP}"
        async with self.ari.session.ws_connect(url, heartbeat=5) as ws:
            self._app_ready.set()
            async for _ in ws:
                pass

    async def close(self) -> None:
        if self.controller is not None:
            await self.controller.stop()
        if hasattr(self, "_app"):
            self._app.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._app
        if hasattr(self, "ami"):
            await self.ami.close()
        if hasattr(self, "ari"):
            await self.ari.close()

    async def _on_join(self, event: Any) -> None:
        self.joins[event["Uniqueid"]] = float(event["Timestamp"])

    async def _on_bridge_enter(self, event: Any) -> None:
        members = self.bridges.setdefault(event["BridgeUniqueid"], [])
        members.append(event["Uniqueid"])
        if len(members) == 2:  # the second channel is in: the call is connected
            self.connects += 1
            stamp = float(event["Timestamp"])
            for uniqueid in members:
                self.connected.setdefault(uniqueid, stamp)

    async def set_talk(self, seconds: float) -> None:
        await self.ami.action({"Action": "Setvar", "Variable": "BENCH_TALK", "Value": f"{seconds}"})

    async def app_queue_members(self, add: bool) -> None:
        for number in agent_numbers():
            action = {"Action": "QueueAdd" if add else "QueueRemove", "Queue": QUEUE}
            action["Interface"] = agent_endpoint(number)
            if add:
                action["MemberName"] = f"bench-{number}"
            # panoramisk would wait for a list after "Added interface to queue".
            await self.ami.action(action, as_list=False)

    async def phase(self, side: str, *, main: bool) -> Any:
        """One side's main run (a Run) or capacity search (a list of Runs)."""
        if side == APPQUEUE:
            await self.app_queue_members(add=True)
        else:
            await self.start_controller(side)
        try:
            if WARMUP_CALLS:
                await self.run(side, "warm-up", calls=WARMUP_CALLS, rate=20, talk_s=0.3)
            if main:
                run = await self.run(side, "main", calls=CALLS, rate=RATE, talk_s=TALK_S)
                print(run_row(run), flush=True)
                return run
            return await capacity(self, side)
        finally:
            if side == APPQUEUE:
                await self.app_queue_members(add=False)
            else:
                await self.stop_controller()

    async def start_controller(self, side: str = CONTROLLER) -> None:
        env = {
            **os.environ,
            **(baseline_env() if side == BASELINE_SIDE else {}),
            **self.asterisk.endpoints.controller_env(),
            "PBX_DATABASE__URL": f"sqlite+aiosqlite:///{self.workdir / 'pbx.db'}",
            "PBX_DATA_DIR": str(self.workdir / "var"),
            "BENCH_CONTROLLER_TOML": controller_toml(self.asterisk.greeting),
        }
        self.controller = ControllerProcess(self.workdir)
        script = BASELINE / "bench" / SCRIPT.name if side == BASELINE_SIDE else SCRIPT
        await self.controller.start(env, script)

    async def stop_controller(self) -> None:
        if self.controller is not None:
            await self.controller.stop()
            self.controller = None

    # one run ----------------------------------------------------------------------------

    def cpu(self) -> Cpu:
        return Cpu(
            proc_cpu_s(self.asterisk.process.pid),
            proc_cpu_s(self.controller.pid) if self.controller and self.controller.process else 0,
            proc_cpu_s(os.getpid()),
            machine_busy_s(),
        )

    async def channels_left(self) -> bool:
        """Whether Asterisk has channels (an Asterisk too busy to say counts as yes)."""
        try:
            return bool(await self.ari.request("GET", "/channels"))
        except (aiohttp.ClientError, RuntimeError, OSError, TimeoutError, ValueError):
            return True

    async def wait_idle(self, within_s: float) -> bool:
        """Until Asterisk has no channel left. At the deadline whatever is left
        is hung up with one CLI command (a melted-down Asterisk answers one
        ARI request in seconds), then given a few seconds to go."""
        deadline = time.monotonic() + within_s
        while await self.channels_left():
            if time.monotonic() > deadline:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.asterisk.cli, "channel request hangup all", 15)
                gone = time.monotonic() + 10
                while time.monotonic() < gone and await self.channels_left():
                    await asyncio.sleep(0.2)
                return False
            await asyncio.sleep(0.1)
        return True

    async def originate(self, endpoint: str, channel_id: str) -> None:
        """A caller: the Local channel's ;2 half runs `endpoint`'s dialplan
        (the call under test), its ;1 half waits in [pbx-bench-caller].
        G.711 (ulaw), as a carrier trunk's caller: without `formats` a Local
        channel originated over ARI takes slin192, and Asterisk resampled
        every frame of hold music and talk to 192 kHz on both sides."""
        await self.ari.request(
            "POST",
            f"/channels/{channel_id}",
            {
                "endpoint": endpoint,
                "context": "pbx-bench-caller",
                "extension": "s",
                "priority": 1,
                "timeout": CALLER_TIMEOUT_S,
                "formats": CALLER_FORMAT,
            },
        )

    async def wait_quiet(self, within_s: float = 20.0) -> None:
        """Until Asterisk's own work has died down (a collapsed run leaves
        backlogs behind its last channel): under 5 % of a core for 0.5 s."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            before = proc_cpu_s(self.asterisk.process.pid)
            await asyncio.sleep(0.5)
            if proc_cpu_s(self.asterisk.process.pid) - before < 0.025:
                return

    async def run(self, side: str, label: str, *, calls: int, rate: float, talk_s: float) -> Run:
        talk_s = max(talk_s, 0.05)  # the agents' TIMEOUT(absolute)=0 would mean no limit
        await self.set_talk(talk_s)
        await self.wait_idle(DRAIN_TIMEOUT_S)
        await self.wait_quiet()
        if side != APPQUEUE:
            assert self.controller is not None
            await self.controller.ask("collect")  # forget anything earlier
        self.joins.clear()
        self.bridges.clear()
        self.connected.clear()
        self.connects = 0
        self.runs += 1
        context = "pbx-bench-queue" if side == APPQUEUE else "pbx-inbound"
        endpoint = f"Local/{DID}@{context}"
        result = Run(side, label, calls, rate, talk_s)
        # Past the knee a side can fall behind by minutes, and what is left
        # behind slows the next step: stop sending once it is a second behind.
        backlog_limit = max(25, int(rate))

        cpu0 = self.cpu()
        began = time.monotonic()
        ids: list[str] = []
        sent: list[float] = []
        tasks: list[asyncio.Task[Any]] = []
        for n in range(calls):
            delay = began + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if n - self.connects > backlog_limit:
                result.aborted = True
                break
            channel_id = f"bq{self.runs}-{n}"
            ids.append(channel_id)
            sent.append(time.monotonic())
            tasks.append(asyncio.create_task(self.originate(endpoint, channel_id)))
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        failed = {ids[i] for i, o in enumerate(outcomes) if isinstance(o, BaseException)}
        result.failed_originates = len(failed)
        await asyncio.sleep(talk_s * 0.9)
        drain_s = 5.0 if result.aborted else DRAIN_TIMEOUT_S
        result.timed_out = not await self.wait_idle(drain_s)
        records: dict[str, Any] = {"calls": {}, "cdrs": []}
        if side != APPQUEUE:
            assert self.controller is not None
            expected = len(ids) - len(failed)
            deadline = time.monotonic() + (3 if result.aborted or result.timed_out else 10)
            while time.monotonic() < deadline:
                status = await self.controller.ask("count")
                if status["cdrs"] >= expected and status["caught_up"]:
                    break
                await asyncio.sleep(0.05)
        result.cpu = self.cpu() - cpu0
        result.seconds = time.monotonic() - began
        if side != APPQUEUE:
            assert self.controller is not None
            records = await self.controller.ask("collect")

        callers = [f"{channel_id};2" for channel_id in ids]
        if side == APPQUEUE:
            entries = {c: self.joins[c] for c in callers if c in self.joins}
        else:
            entries = {c: r["enqueued"] for c, r in records["calls"].items() if c in callers}
        stamps = sorted(entries.values())
        if len(stamps) > 1 and stamps[-1] > stamps[0]:
            result.offered_rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        if len(sent) > 1:
            result.sent_rate = (len(sent) - 1) / (sent[-1] - sent[0])
        connected = [c for c in callers if c in entries and c in self.connected]
        result.connects_ms = [(self.connected[c] - entries[c]) * 1000 for c in connected]
        result.sent = len(ids)
        result.lost = calls - len(connected)  # calls never sent count as lost
        if side != APPQUEUE:
            self._controller_details(result, records, connected)
        return result

    def _controller_details(
        self, result: Run, records: dict[str, Any], connected: list[str]
    ) -> None:
        calls = records["calls"]
        result.traffic = [n / max(result.sent, 1) for n in records.get("traffic", [])]
        answered: dict[str, int] = {}
        for call_id, disposition, talk_ms in records["cdrs"]:
            result.talk_ms.append(talk_ms)
            answered[call_id] = answered.get(call_id, 0) + (disposition == "answered")
        all_ids = [cdr[0] for cdr in records["cdrs"]]
        duplicates = len(all_ids) - len(set(all_ids))
        # Connected, and exactly one CDR that says so.
        good = [c for c in connected if answered.get(calls[c].get("call_id", ""), 0) == 1]
        result.cdr_problems = len(connected) - len(good) + duplicates
        result.lost += result.cdr_problems
        segments: dict[str, list[float]] = {
            "greeting ends in Asterisk -> engine enqueues": [],
            "enqueued -> agent leg up in Asterisk (StasisStart)": [],
            "leg StasisStart -> controller receives it": [],
            "received -> engine handles AgentLegAnswered": [],
            "handled -> Bridge request returns": [],
            "enqueued -> 2nd BridgeEnter (connect)": [],
        }
        keys = list(segments)
        for caller in connected:
            r = calls[caller]
            greeting_ast, leg_ast = ari_time(r.get("greeting_ast")), ari_time(r.get("leg_ast"))
            pairs = [
                (greeting_ast, r["enqueued"]),
                (r["enqueued"], leg_ast),
                (leg_ast, r.get("leg_recv")),
                (r.get("leg_recv"), r.get("leg_handled")),
                (r.get("leg_handled"), r.get("bridged")),
                (r["enqueued"], self.connected[caller]),
            ]
            for key, (start, end) in zip(keys, pairs, strict=True):
                if start is not None and end is not None:
                    segments[key].append((end - start) * 1000)
            if "bridged" in r:
                result.own_view_ms.append((r["bridged"] - r["enqueued"]) * 1000)
        result.breakdown = segments


# -- reporting ---------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def run_row(run: Run) -> str:
    assert run.cpu is not None
    cpu = run.cpu
    flags = f" ABORTED after {run.sent} calls (a second behind)" if run.aborted else ""
    flags += " TIMEOUT" if run.timed_out else ""
    return (
        f"  {run.side:<10} {run.label:<9} {run.nominal_rate:>5.0f} {run.offered_rate:>7.1f} "
        f"{run.calls:>5} {run.lost:>4}  {fmt(run.p50, 2):>7} {fmt(run.p99, 2):>8} "
        f"{fmt(max(run.connects_ms) if run.connects_ms else None, 1):>8}  "
        f"{run.per_100(cpu.asterisk):>8.3f} {run.per_100(cpu.controller):>7.3f} "
        f"{run.total_cpu_per_100:>6.3f}  {run.per_100(cpu.bench):>6.3f} "
        f"{run.per_100(cpu.other):>6.3f}{flags}"
    )


HEADER = (
    "  side       run       rate/s offered calls lost  p50 ms   p99 ms   max ms   "
    "Asterisk contrl  total   bench  other\n"
    "                       nominal measured                                      "
    "CPU s per 100 calls"
)


def held(run: Run) -> bool:
    return run.p99 is not None and run.p99 < P99_LIMIT_MS and not run.lost


def capacity_of(runs: list[Run]) -> tuple[float | None, Run | None]:
    """The highest offered rate whose p99 stayed under the limit, stepping up
    until the first step that did not (twice, see `capacity`); and that step."""
    best: float | None = None
    for i, run in enumerate(runs):
        if held(run):
            best = max(best or 0.0, run.offered_rate)
        elif i + 1 == len(runs) or runs[i + 1].nominal_rate != run.nominal_rate:
            return best, run  # not a step that held when run again
    return best, None


async def capacity(bench: Bench, side: str) -> list[Run]:
    """Step up the rates. A step that breaks the limit without falling behind
    is run once more: on this shared box one disturbance (another VM, say)
    can push a single step's p99 past 50 ms, and the knee is where the side
    cannot hold the rate, not where the box hiccupped once. Both sides alike."""
    runs: list[Run] = []
    for rate in CAPACITY_RATES:
        for attempt in ("capacity", "again"):
            run = await bench.run(
                side, attempt, calls=CAPACITY_CALLS, rate=rate, talk_s=CAPACITY_TALK_S
            )
            print(run_row(run), flush=True)
            runs.append(run)
            if held(run) or run.aborted:
                break
        if not held(run):
            break  # past the knee
    return runs


async def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    asterisk = bench_asterisk_class()()
    ok = False
    try:
        await asyncio.to_thread(asterisk.start)
        bench = Bench(asterisk, workdir)
        try:
            await bench.open()
            print(
                f"== queue connect: app_queue vs pbx-controller on one sandbox Asterisk "
                f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start)\n"
                f"   load: {CALLS} calls at {RATE:g}/s, {AGENTS} Local-channel agents, "
                f"{TALK_S:g} s talk; capacity: {CAPACITY_CALLS} calls a step at "
                f"{', '.join(f'{r:g}' for r in CAPACITY_RATES) or '-'} calls/s, "
                f"{CAPACITY_TALK_S:g} s talk, until p99 >= {P99_LIMIT_MS:g} ms\n"
                "   app_queue: Answer, 20 ms greeting, Queue(bench) with hold music, "
                "leastrecent, ringinuse=no, wrapuptime=0\n"
                "   controller: its own process, as pbxctl serve (SQLite, CDR outbox, agent "
                "state log, FastAGI, AMI); longest idle, no wrap-up, 20 ms greeting,\n"
                "   hold music after 300 ms of ringing (these agents answer sooner)\n"
                "   connect = queue entry -> 2nd channel's BridgeEnter (AMI Timestamp); "
                "queue entry = QueueCallerJoin (app_queue),\n"
                "   the engine enqueueing the caller after its greeting (controller)\n"
                "   CPU = Asterisk (app_queue), Asterisk + controller process (controller); "
                "bench and other processes shown apart\n",
                flush=True,
            )
            print(HEADER, flush=True)
            # Each side alone: app_queue's members only while app_queue runs,
            # the controller process only while it runs (its AMI session alone
            # costs Asterisk CPU). The main runs first, so that neither sees
            # what a capacity step past the knee leaves behind.
            aq_runs: list[Run] = []
            pc_runs: list[Run] = []
            bl_runs: list[Run] = []
            for _ in range(ROUNDS):  # alternating: see "Rounds" above
                aq_runs.append(await bench.phase(APPQUEUE, main=True))
                pc_runs.append(await bench.phase(CONTROLLER, main=True))
                if BASELINE is not None:
                    bl_runs.append(await bench.phase(BASELINE_SIDE, main=True))
            aq_main, pc_main = merged(aq_runs), merged(pc_runs)
            if ROUNDS > 1:
                print(run_row(aq_main), flush=True)
                print(run_row(pc_main), flush=True)
            if bl_runs:
                print(run_row(merged(bl_runs)), f" <- baseline: {BASELINE}", flush=True)
            aq_capacity = await bench.phase(APPQUEUE, main=False)
            pc_capacity = await bench.phase(CONTROLLER, main=False)
            ok = True
        finally:
            if not ok:
                tail = ControllerProcess(workdir).log_tail()
                print(f"-- controller log (tail):\n{tail}", file=sys.stderr)
            await bench.close()
    finally:
        await asyncio.to_thread(asterisk.cleanup)
        if KEEP or not ok:
            print(f"(controller log and database kept in {workdir})", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    report(aq_main, aq_capacity, pc_main, pc_capacity, aq_runs, pc_runs)
    return 1 if pc_main.lost else 0


def report(
    aq_main: Run,
    aq_capacity: list[Run],
    pc_main: Run,
    pc_capacity: list[Run],
    aq_runs: list[Run],
    pc_runs: list[Run],
) -> None:
    assert aq_main.cpu is not None
    assert pc_main.cpu is not None
    print("\n== controller connect, step by step (main run; ms, Asterisk stamps to 1 ms)")
    for name, values in pc_main.breakdown.items():
        if values:
            print(
                f"  {name:<52} p50 {statistics.median(values):7.2f}  "
                f"p99 {percentile(values, 0.99):7.2f}"
            )
    if pc_main.own_view_ms:
        own = pc_main.own_view_ms
        print(
            f"  {'(own view) enqueued -> Bridge request returns':<52} "
            f"p50 {statistics.median(own):7.2f}  p99 {percentile(own, 0.99):7.2f}"
        )
    if pc_main.talk_ms:
        print(
            f"  {'(check) talk time in the CDRs':<52} p50 {statistics.median(pc_main.talk_ms):7.0f}"
            f"  (BENCH_TALK_S {pc_main.talk_s:g} s)"
        )
    if pc_main.traffic:
        requests, events, ami_events = pc_main.traffic
        print(
            f"  {'(check) per call: ARI requests / ARI events / AMI events':<52} "
            f"{requests:.1f} / {events:.1f} / {ami_events:.1f} (AMI events parsed, none used)"
        )
    if pc_main.cdr_problems:
        print(f"  CDR problems (missing, doubled or not 'answered'): {pc_main.cdr_problems}")

    aq_cap, aq_knee = capacity_of(aq_capacity)
    pc_cap, pc_knee = capacity_of(pc_capacity)
    print(f"\n== capacity with {CAPACITY_TALK_S:g} s talk (highest offered rate with p99 < 50 ms)")
    for side, cap, knee, runs in (
        (APPQUEUE, aq_cap, aq_knee, aq_capacity),
        (CONTROLLER, pc_cap, pc_knee, pc_capacity),
    ):
        if not runs:
            print(f"  {side:<10} not searched (BENCH_RATES is empty)")
            continue
        if knee is None:
            past = f"no knee up to {runs[-1].offered_rate:.1f}/s"
        else:
            past = (
                f"past the knee, {knee.nominal_rate:g}/s nominal, sent at {knee.sent_rate:.1f}/s, "
                f"queue entries at {knee.offered_rate:.1f}/s: p50 {fmt(knee.p50, 1)} ms, "
                f"p99 {fmt(knee.p99, 1)} ms, {knee.calls - knee.lost} of {knee.calls} connected"
                + (" (stopped sending: a second behind)" if knee.aborted else "")
            )
        print(f"  {side:<10} {fmt(cap, 1):>6} calls/s   {past}")

    app_cpu = aq_main.per_100(aq_main.cpu.asterisk)
    total = pc_main.total_cpu_per_100
    print("\n== targets")
    checks: list[tuple[str, bool | None]] = [
        (f"connect p99 <= 15 ms: {fmt(pc_main.p99, 2)} ms", (pc_main.p99 or 1e9) <= 15),
        (
            f"CPU per 100 calls <= 1.5 x app_queue's ({1.5 * app_cpu:.3f} s): {total:.3f} s "
            f"({total / app_cpu:.2f} x)",
            total <= 1.5 * app_cpu,
        ),
        (f"zero lost calls: {pc_main.lost} lost", pc_main.lost == 0),
        (
            f"holds >= 60 calls/s at p99 < 50 ms: {fmt(pc_cap, 1)}",
            round(pc_cap or 0, 1) >= 60 if pc_capacity else None,
        ),
    ]
    for text, passed in checks:
        print(f"  {'SKIP' if passed is None else 'PASS' if passed else 'FAIL'}  {text}")

    result = {
        "bench": "queue",
        "calls": pc_main.calls,
        "rounds": len(pc_runs),
        "offered_calls_per_s": round(pc_main.offered_rate, 1),
        "appqueue_offered_calls_per_s": round(aq_main.offered_rate, 1),
        "connect_p50_ms": pc_main.p50,
        "connect_p99_ms": pc_main.p99,
        "appqueue_connect_p50_ms": aq_main.p50,
        "appqueue_connect_p99_ms": aq_main.p99,
        "cpu_per_100_calls_s": total,
        "asterisk_cpu_per_100_calls_s": pc_main.per_100(pc_main.cpu.asterisk),
        "controller_cpu_per_100_calls_s": pc_main.per_100(pc_main.cpu.controller),
        "appqueue_cpu_per_100_calls_s": app_cpu,
        "cpu_per_100_calls_s_rounds": [r.total_cpu_per_100 for r in pc_runs],
        "appqueue_cpu_per_100_calls_s_rounds": [r.total_cpu_per_100 for r in aq_runs],
        "lost_calls": pc_main.lost,
        "appqueue_lost_calls": aq_main.lost,
        "other_processes_cpu_per_100_calls_s": pc_main.per_100(pc_main.cpu.other),
        "appqueue_other_processes_cpu_per_100_calls_s": aq_main.per_100(aq_main.cpu.other),
        "capacity_calls_per_s": round(pc_cap, 1) if pc_cap is not None else None,
        "appqueue_capacity_calls_per_s": round(aq_cap, 1) if aq_cap is not None else None,
        "capacity_steps": [
            {
                "side": run.side,
                "run": run.label,
                "nominal_calls_per_s": run.nominal_rate,
                "offered_calls_per_s": round(run.offered_rate, 1),
                "p50_ms": run.p50,
                "p99_ms": run.p99,
                "lost": run.lost,
                "aborted": run.aborted,
            }
            for run in [*aq_capacity, *pc_capacity]
        ],
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--controller"]:
        if os.environ.get("BENCH_CPROFILE"):
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
            try:
                asyncio.run(controller_child())
            finally:
                prof.disable()
                prof.dump_stats(f"{os.environ['BENCH_CPROFILE']}.{os.getpid()}")
        else:
            asyncio.run(controller_child())
    else:
        sys.exit(asyncio.run(main()))
