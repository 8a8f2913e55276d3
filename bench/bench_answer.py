"""Greeting latency through the controller, on the sandbox Asterisk.

Callers are Local channels originated over ARI into the inbound dialplan at
a steady rate; each one is answered by the dialplan, greeted by the
controller, and hung up. Measured:

- greeting latency: the originate request -> Asterisk has accepted the
  controller's Play of the greeting (dialplan, Answer, Stasis(), the
  controller's StasisStart handling and its Play request);
- answer latency: the originate request -> the caller's leg is up
  ([pbx-inbound] answers before Stasis(), so this no longer involves the
  controller: shown for comparison with earlier runs);
- CPU seconds per 100 calls, for Asterisk and for the controller process
  (which also runs this load generator: an upper bound for the controller);
- lost calls: originated calls without exactly one CDR.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from urllib.parse import unquote

from pbx_controller.asterisk.ari import AriClient, AriError, RestCall, StreamConnected
from pbx_controller.core.model import Directory, Tenant
from pbx_controller.sandbox.asterisk import SandboxAsterisk, controller_settings
from pbx_controller.service import Controller, LoggingCdrSink

CALLS = int(os.environ.get("BENCH_CALLS", "300"))
RATE = float(os.environ.get("BENCH_RATE", "25"))
DID = "5550001"


def asterisk_cpu_s(pid: int) -> float:
    """utime + stime of Asterisk and its threads, from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    asterisk = SandboxAsterisk()
    await asyncio.to_thread(asterisk.start)
    try:
        settings = controller_settings(asterisk)
        directory = Directory.build(
            [Tenant("bench", "Bench", greeting=("sound:beep",))], [(DID, "bench")]
        )
        sink = LoggingCdrSink()
        callers = AriClient(
            settings.ari.url,
            settings.ari.username,
            settings.ari.password.get_secret_value(),
            "bench-callers",
        )
        reader = asyncio.create_task(callers.run_events())
        assert isinstance(await callers.events.get(), StreamConnected)
        sent: dict[str, float] = {}
        up: dict[str, float] = {}

        async def collect() -> None:
            while True:
                item = await callers.events.get()
                if isinstance(item, dict) and item.get("type") == "StasisStart":
                    up.setdefault(item["channel"]["id"], time.perf_counter())

        collector = asyncio.create_task(collect())
        greeted: dict[str, float] = {}
        async with Controller(settings, directory, sink) as controller:
            play = controller.ari.play

            async def timed_play(channel_id: str, *args: object, **kwargs: object) -> object:
                result = await play(channel_id, *args, **kwargs)  # type: ignore[arg-type]
                greeted.setdefault(channel_id.removesuffix(";2"), time.perf_counter())
                return result

            send = controller.ari.send

            def timed_send(call: RestCall, done: Callable[[AriError | None], None]) -> bool:
                # A pipelined Play (REST over the websocket): stamped when
                # Asterisk's answer is handled, as timed_play is over HTTP.
                if "/play/" not in call.path:
                    return send(call, done)
                channel_id = unquote(call.path.split("/")[2])

                def timed_done(error: AriError | None) -> None:
                    if error is None:
                        greeted.setdefault(channel_id.removesuffix(";2"), time.perf_counter())
                    done(error)

                return send(call, timed_done)

            controller.ari.play = timed_play  # type: ignore[method-assign]
            controller.ari.send = timed_send  # type: ignore[method-assign]
            ast_cpu0, own_cpu0 = asterisk_cpu_s(asterisk.process.pid), own_cpu_s()
            started = time.perf_counter()
            pending: set[asyncio.Task[object]] = set()
            for n in range(CALLS):
                # A scheduled generator: call n leaves at n / RATE, however
                # long the previous request took.
                delay = started + n / RATE - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                channel_id = f"bench-{uuid.uuid4()}"
                sent[channel_id] = time.perf_counter()
                pending.add(
                    asyncio.create_task(
                        callers.originate(
                            f"Local/{DID}@pbx-inbound", channel_id=channel_id, timeout_s=10
                        )
                    )
                )
            offered_rate = CALLS / (time.perf_counter() - started)
            deadline = time.perf_counter() + 30
            while len(sink.records) < CALLS and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            ast_cpu = asterisk_cpu_s(asterisk.process.pid) - ast_cpu0
            own_cpu = own_cpu_s() - own_cpu0
            await controller.executor.drain()
        collector.cancel()
        reader.cancel()
        await callers.close()
    finally:
        await asyncio.to_thread(asterisk.cleanup)

    latencies = [(up[c] - sent[c]) * 1000 for c in sent if c in up]
    greetings = [(greeted[c] - sent[c]) * 1000 for c in sent if c in greeted]
    cdr_ids = [r.call_id for r in sink.records]
    lost = CALLS - len(set(cdr_ids)) + (len(cdr_ids) - len(set(cdr_ids)))
    result = {
        "bench": "answer",
        "calls": CALLS,
        "offered_calls_per_s": round(offered_rate, 1),
        "greeting_p50_ms": round(statistics.median(greetings), 2) if greetings else None,
        "greeting_p99_ms": round(percentile(greetings, 0.99), 2) if greetings else None,
        "greeted": len(greetings),
        "answer_p50_ms": round(statistics.median(latencies), 2) if latencies else None,
        "answer_p99_ms": round(percentile(latencies, 0.99), 2) if latencies else None,
        "answered": len(latencies),
        "lost_calls": lost,
        "asterisk_cpu_per_100_calls_s": round(ast_cpu * 100 / CALLS, 3),
        "controller_cpu_per_100_calls_s": round(own_cpu * 100 / CALLS, 3),
    }
    print(
        f"calls {CALLS} offered at {result['offered_calls_per_s']}/s; "
        f"answered {len(latencies)}; lost {lost}"
    )
    print(
        f"greeting latency p50 {result['greeting_p50_ms']} ms, "
        f"p99 {result['greeting_p99_ms']} ms ({len(greetings)} greeted)"
    )
    print(
        f"answer latency (the dialplan's) p50 {result['answer_p50_ms']} ms, "
        f"p99 {result['answer_p99_ms']} ms"
    )
    print(
        f"CPU per 100 calls: Asterisk {result['asterisk_cpu_per_100_calls_s']} s, "
        f"controller+generator {result['controller_cpu_per_100_calls_s']} s"
    )
    print(json.dumps(result))
    if lost or len(greetings) < CALLS:
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
