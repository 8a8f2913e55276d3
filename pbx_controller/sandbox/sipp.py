"""Real SIP callers from sipp (Debian's sip-tester), for tests, the demo and
benchmarks. Scenarios live in scripts/sipp/."""

from __future__ import annotations

import asyncio
import csv
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pbx_controller.sandbox.asterisk import free_port

SCENARIOS = Path(__file__).resolve().parents[2] / "scripts" / "sipp"


class SippUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class SippResult:
    returncode: int
    successful: int
    failed: int
    output: str


def sipp_path() -> str:
    path = shutil.which("sipp")
    if path is None:
        raise SippUnavailable("sipp is not installed (Debian package sip-tester; `make setup`)")
    return path


async def call(
    sip_port: int,
    did: str,
    *,
    calls: int = 1,
    rate: float = 1.0,
    scenario: str = "caller.xml",
    timeout_s: float = 60.0,
) -> SippResult:
    """Place `calls` calls to `did` through the PBX's SIP port and wait for
    all of them to finish. Returns sipp's own success/failure counts."""
    with tempfile.TemporaryDirectory(prefix="sipp-") as work:
        stats = Path(work) / "stats.csv"
        args = [
            sipp_path(),
            f"127.0.0.1:{sip_port}",
            "-sf",
            str(SCENARIOS / scenario),
            "-s",
            did,
            "-i",
            "127.0.0.1",
            "-p",
            str(free_port(socket.SOCK_DGRAM)),
            "-mp",
            str(free_port(socket.SOCK_DGRAM)),
            "-m",
            str(calls),
            "-r",
            str(rate),
            "-l",
            str(max(calls, 1)),
            "-timeout",
            f"{int(timeout_s)}s",
            "-timeout_error",
            "-trace_stat",
            "-stf",
            str(stats),
            "-fd",
            "1",
            "-nostdin",
        ]
        process = await asyncio.create_subprocess_exec(
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=work,
        )
        try:
            async with asyncio.timeout(timeout_s + 10):
                out, _ = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        successful, failed = _final_counts(stats)
        return SippResult(process.returncode or 0, successful, failed, out.decode(errors="replace"))


def _final_counts(stats: Path) -> tuple[int, int]:
    if not stats.exists():
        return 0, 0
    with stats.open(newline="") as fh:
        rows = list(csv.reader(fh, delimiter=";"))
    if len(rows) < 2:
        return 0, 0
    header, last = rows[0], rows[-1]
    row = dict(zip(header, last, strict=False))
    return int(row.get("SuccessfulCall(C)", 0)), int(row.get("FailedCall(C)", 0))
