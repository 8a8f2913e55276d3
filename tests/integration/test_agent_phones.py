"""Agent phones as the project defines them: `pbxctl config phones` writes a
PJSIP endpoint with digest auth per agent, Asterisk loads it, a sipp phone
registers with its password (and not with a wrong one), and a call to the
agent's endpoint rings the registered phone."""

from __future__ import annotations

import asyncio
import stat
import uuid
from pathlib import Path

import pytest

from pbx_controller.asterisk.ari import AriClient, StreamConnected
from pbx_controller.cli.main import main
from pbx_controller.configfile import parse
from pbx_controller.sandbox.asterisk import SandboxAsterisk
from pbx_controller.sandbox.sipp import AgentPhone, register
from pbx_controller.store.config_store import apply_config
from pbx_controller.store.db import make_engine, make_sessionmaker, upgrade_to_head

pytestmark = pytest.mark.asterisk

CONFIG = """
[tenants.ph]
name = "Phone Co"
greeting = ["sound:beep"]

[queues.ph-front]
tenant = "ph"

[agents.ola]
name = "Ola"
endpoint = "PJSIP/agent-ola"
queues = ["ph-front"]

[agents.bench]
name = "Local agent, no phone"
endpoint = "Local/2001@pbx-bench-agent"
queues = ["ph-front"]
"""
PASSWORD = "correct-horse-battery"


async def store_config(url: str) -> None:
    await upgrade_to_head(url)
    engine = make_engine(url)
    try:
        await apply_config(make_sessionmaker(engine), parse(CONFIG))
    finally:
        await engine.dispose()


def passwords_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "phones.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


async def test_a_registered_phone_rings_for_its_agent(
    fresh_asterisk: SandboxAsterisk,
    sqlite_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await store_config(sqlite_database_url)
    passwords = passwords_file(tmp_path, f'ola = "{PASSWORD}"\n')
    out = fresh_asterisk.host("etc/pjsip_agents.conf")
    monkeypatch.delenv("PBX_CONFIG", raising=False)
    monkeypatch.setenv("PBX_DATABASE__URL", sqlite_database_url)
    argv = ["config", "phones", "--passwords", str(passwords), "--out", str(out)]
    assert await asyncio.to_thread(main, argv) == 0
    assert "1 phone(s)" in capsys.readouterr().out
    text = out.read_text()
    assert PASSWORD not in text  # digests only
    assert "[agent-ola]" in text
    assert "Local" not in text
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    fresh_asterisk.cli("module reload res_pjsip.so")

    sip_port = fresh_asterisk.endpoints.sip_port
    phone = AgentPhone(ring_ms=100)
    wrong = await register(sip_port, "agent-ola", "not-the-password", phone)
    assert (wrong.successful, wrong.failed) == (0, 1), wrong.output
    assert "agent-ola" not in fresh_asterisk.cli("pjsip show contacts")
    right = await register(sip_port, "agent-ola", PASSWORD, phone)
    assert (right.successful, right.failed) == (1, 0), right.output
    assert "agent-ola" in fresh_asterisk.cli("pjsip show contacts")
    async with phone:
        # A call to the agent's endpoint reaches the registered contact: the
        # sipp phone rings and answers, and the channel enters our app up.
        e = fresh_asterisk.endpoints
        ari = AriClient(e.ari_url, e.ari_username, e.ari_password, "phones-test")
        reader = asyncio.create_task(ari.run_events())
        try:
            async with asyncio.timeout(10):
                assert isinstance(await ari.events.get(), StreamConnected)
            channel_id = f"ph-{uuid.uuid4()}"
            await ari.originate("PJSIP/agent-ola", channel_id=channel_id, app_args="agent")
            async with asyncio.timeout(10):
                while True:
                    event = await ari.events.get()
                    if isinstance(event, dict) and event.get("type") == "StasisStart":
                        break
            assert event["channel"]["id"] == channel_id
            assert event["channel"]["state"] == "Up"
            await ari.hangup(channel_id)
        finally:
            reader.cancel()
            await ari.close()


async def test_an_agent_without_a_password_is_named_and_nothing_is_written(
    sqlite_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await store_config(sqlite_database_url)
    passwords = passwords_file(tmp_path, f'olaf = "{PASSWORD}"\n')
    out = tmp_path / "pjsip_agents.conf"
    monkeypatch.delenv("PBX_CONFIG", raising=False)
    monkeypatch.setenv("PBX_DATABASE__URL", sqlite_database_url)
    argv = ["config", "phones", "--passwords", str(passwords), "--out", str(out)]
    assert await asyncio.to_thread(main, argv) == 2
    assert "no password for agent(s) ola" in capsys.readouterr().err
    assert not out.exists()
