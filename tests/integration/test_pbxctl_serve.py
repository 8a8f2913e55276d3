"""`pbxctl serve` as ops run it: a separate process configured by the
environment, serving real SIP calls into its database, and stopping cleanly
on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from pbx_controller.sandbox import sipp
from pbx_controller.sandbox.asterisk import SandboxAsterisk
from pbx_controller.store import models as m
from pbx_controller.store.db import make_engine, make_sessionmaker, upgrade_to_head

pytestmark = pytest.mark.asterisk


async def read_until(stream: asyncio.StreamReader, text: str, seen: list[str]) -> None:
    async with asyncio.timeout(20):
        while True:
            line = (await stream.readline()).decode(errors="replace")
            if not line:
                raise AssertionError(f"process ended before {text!r}:\n{''.join(seen)}")
            seen.append(line)
            if text in line:
                return


async def test_serve_answers_calls_and_stops_on_sigterm(
    asterisk: SandboxAsterisk, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'pbx.db'}"
    await upgrade_to_head(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    async with sessions() as session, session.begin():
        session.add(m.Tenant(id="servco", name="Serv Co", greeting_sound="sound:beep"))
        await session.flush()
        session.add(m.Did(number="48227001", tenant_id="servco"))

    env = {
        **os.environ,
        **asterisk.endpoints.controller_env(),
        "PBX_DATABASE__URL": url,
        "PBX_DATA_DIR": str(tmp_path / "var"),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pbx_controller.cli.main",
        "serve",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    seen: list[str] = []
    try:
        assert process.stderr is not None
        await read_until(process.stderr, "pbx-controller ready", seen)
        result = await sipp.call(asterisk.endpoints.sip_port, "48227001", calls=2, rate=10)
        assert (result.successful, result.failed) == (2, 0), result.output[-1500:]

        async with asyncio.timeout(15):
            while True:
                async with sessions() as session:
                    rows = (await session.scalars(select(m.Cdr))).all()
                if len(rows) == 2:
                    break
                await asyncio.sleep(0.05)
        assert {(r.tenant_id, r.did, r.disposition) for r in rows} == {
            ("servco", "48227001", "served")
        }

        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            rest = (await process.stderr.read()).decode(errors="replace")
            code = await process.wait()
        seen.append(rest)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await engine.dispose()
    log = "".join(seen)
    assert code == 0, log
    assert "shutting down" in log
    assert "Traceback" not in log
    # The generated credentials never reach the log.
    assert asterisk.endpoints.ari_password not in log
    assert asterisk.endpoints.ami_password not in log
