"""Real SIP callers from sipp (Debian's sip-tester), for tests, the demo and
benchmarks. Scenarios live in scripts/sipp/."""

from __future__ import annotations

import asyncio
import csv
import functools
import math
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


def write_tone(path: Path, hz: int, seconds: float = 60.0, level: float = 0.3) -> Path:
    """A sine tone as headerless G.711 mu-law at 8 kHz: what sipp's
    `rtp_stream` sends as payload type 0 (PCMU). The test's stand-in for a
    voice: each party gets its own frequency, so a recording's channels can
    be told apart."""
    path.write_bytes(_tone(hz, seconds, level))
    return path


@functools.cache
def _tone(hz: int, seconds: float, level: float) -> bytes:
    amplitude = level * 32767
    samples = range(int(seconds * 8000))
    return bytes(_ulaw(int(amplitude * math.sin(2 * math.pi * hz * n / 8000))) for n in samples)


def _ulaw(sample: int) -> int:
    """G.711 mu-law of one 16-bit sample (ITU-T G.711, the usual bias/clip)."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = max(magnitude.bit_length() - 8, 0)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _with_media(scenario: Path, work: Path, tone_hz: int | None) -> Path:
    """The scenario, streaming a tone where it says <!-- media -->."""
    if tone_hz is None:
        return scenario
    tone = write_tone(work / f"tone-{tone_hz}.ulaw", tone_hz)
    action = f'<nop><action><exec rtp_stream="{tone},-1,0"/></action></nop>'
    text = scenario.read_text().replace("<!-- media -->", action)
    path = work / f"media-{scenario.name}"
    path.write_text(text)
    return path


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
    from_user: str | None = None,
    tone_hz: int | None = None,
) -> SippResult:
    """Place `calls` calls to `did` through the PBX's SIP port and wait for
    all of them to finish. Returns sipp's own success/failure counts."""
    with tempfile.TemporaryDirectory(prefix="sipp-") as work:
        scenario_path = SCENARIOS / scenario
        if from_user is not None:
            # An agent's phone calling a feature code: its From user names it.
            text = scenario_path.read_text().replace("48500[call_number]", from_user)
            scenario_path = Path(work) / scenario
            scenario_path.write_text(text)
        # With `tone_hz`, the caller talks: a steady tone as RTP once answered.
        scenario_path = _with_media(scenario_path, Path(work), tone_hz)
        args = [
            sipp_path(),
            f"127.0.0.1:{sip_port}",
            "-sf",
            str(scenario_path),
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
            "-fd",
            "1",
        ]
        return await _run(args, Path(work), timeout_s)


async def register(
    sip_port: int, username: str, password: str, phone: AgentPhone, *, timeout_s: float = 10.0
) -> SippResult:
    """REGISTER `username` (digest auth with `password`) through the PBX's
    SIP port for `phone`, before it starts: from its own port, with its
    address as the Contact, as a real phone does (Asterisk takes the source
    address as the contact: rewrite_contact). `successful` is 1 when the
    registrar said 200."""
    with tempfile.TemporaryDirectory(prefix="sipp-register-") as work:
        scenario = Path(work) / "register.xml"
        text = (SCENARIOS / "register.xml.in").read_text()
        scenario.write_text(text.replace("@contact@", phone.address))
        args = [
            sipp_path(),
            f"127.0.0.1:{sip_port}",
            "-sf",
            str(scenario),
            "-s",
            username,
            "-au",
            username,
            "-ap",
            password,
            "-i",
            "127.0.0.1",
            "-p",
            str(phone.port),
            "-m",
            "1",
        ]
        return await _run(args, Path(work), timeout_s)


async def _run(args: list[str], work: Path, timeout_s: float) -> SippResult:
    """Run a UAC scenario to its end (`timeout_s` at most); sipp's own
    success/failure counts."""
    stats = work / "stats.csv"
    process = await asyncio.create_subprocess_exec(
        *args,
        "-timeout",
        f"{int(timeout_s)}s",
        "-timeout_error",
        "-trace_stat",
        "-stf",
        str(stats),
        "-nostdin",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=work,
    )
    try:
        async with asyncio.timeout(timeout_s + 10):
            out, _ = await process.communicate()
    except BaseException:  # a timeout, or the test cancelled us: no stray sipp
        if process.returncode is None:
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


class AgentPhone:
    """An agent's phone: a sipp UAS on its own loopback port that rings for
    `ring_ms` and then answers (or never answers), and hangs up after
    `talk_ms` unless the PBX hangs up first. Use as an async context manager;
    `address` is what the PJSIP endpoint's contact points at."""

    def __init__(
        self,
        *,
        ring_ms: int = 200,
        talk_ms: int = 60_000,
        answers: bool = True,
        tone_hz: int | None = None,
    ) -> None:
        self.port = free_port(socket.SOCK_DGRAM)
        self.ring_ms = ring_ms
        self.talk_ms = talk_ms
        self.answers = answers
        self.tone_hz = tone_hz
        self._work: tempfile.TemporaryDirectory[str] | None = None
        self.process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _scenario(self, directory: Path) -> Path:
        text = (SCENARIOS / "agent.xml.in").read_text()
        # A phone that never answers waits in `never` until the PBX cancels.
        text = text.replace("@ring_ms@", str(self.ring_ms))
        text = text.replace("@after_ring@", "answer" if self.answers else "never")
        text = text.replace("@talk_ms@", str(self.talk_ms))
        path = directory / "agent.xml"
        path.write_text(text)
        return _with_media(path, directory, self.tone_hz)

    async def __aenter__(self) -> AgentPhone:
        self._work = tempfile.TemporaryDirectory(prefix="sipp-agent-")
        work = Path(self._work.name)
        self.process = await asyncio.create_subprocess_exec(
            sipp_path(),
            "-sf",
            str(self._scenario(work)),
            "-i",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-mp",
            str(free_port(socket.SOCK_DGRAM)),
            "-nostdin",
            "-aa",  # 200 to OPTIONS (qualify), as a phone does
            "-trace_err",
            "-error_file",
            str(work / "errors.log"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=work,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                async with asyncio.timeout(5):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._work is not None:
            self._work.cleanup()
