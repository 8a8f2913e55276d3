"""`pbxctl config reload` (and SIGHUP) apply a changed configuration to a
running `pbxctl serve`, live: a call in progress through the real Asterisk
goes on to its natural end, agents stay logged in, a new agent and a new
DID work at once; a reload that would drop a logged-in agent is refused
with the reason and changes nothing."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from pbx_controller.sandbox.asterisk import SandboxAsterisk
from pbx_controller.store import models as m
from tests.integration.cdr_support import (
    PBXCTL,
    Serve,
    agents,
    apoll,
    apply_config,
    cdr_rows,
    configured_serve,
    pbxctl,
    place_call,
    poll,
)

pytestmark = pytest.mark.asterisk

FRONT_DID, BACK_DID = "48227200", "48227201"
BASE = f"""
[tenants.rld]
name = "Reload Co"
greeting = ["sound:beep"]
consent_policy = "off"

[[tenants.rld.dids]]
number = "{FRONT_DID}"
queue = "rld-front"

[queues.rld-front]
tenant = "rld"
wrapup_s = 0

[queues.rld-front.announcements]
position = false
estimated_wait = false

[agents.ann]
name = "Ann"
endpoint = "Local/2101@pbx-bench-agent"
queues = ["rld-front"]
"""
# A second DID and queue, and bob to answer it.
GROWN = (
    BASE
    + f"""
[[tenants.rld.dids]]
number = "{BACK_DID}"
queue = "rld-back"

[queues.rld-back]
tenant = "rld"
wrapup_s = 0

[queues.rld-back.announcements]
position = false
estimated_wait = false

[agents.bob]
name = "Bob"
endpoint = "Local/2102@pbx-bench-agent"
queues = ["rld-back"]
"""
)


def run(serve: Serve, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PBXCTL, *args], env=serve.env, capture_output=True, text=True, timeout=30, check=False
    )


async def test_reload_applies_a_new_configuration_without_dropping_a_call(
    asterisk: SandboxAsterisk, tmp_path: Path
) -> None:
    serve = await configured_serve(asterisk, tmp_path, BASE)
    url = serve.database_url
    # Agents talk 4 s: long enough for the reload to happen mid-call.
    asterisk.cli("dialplan set global BENCH_TALK 4")
    try:
        await serve.start()
        pbxctl(serve, "agent", "login", "ann")
        place_call(asterisk, FRONT_DID)
        await poll(lambda: agents(serve)["ann"][0] == "on_call", timeout=15)

        apply_config(serve, tmp_path, GROWN)
        refused = run(serve, "agent", "login", "bob")
        assert refused.returncode == 1, refused.stderr  # not known to the controller yet
        reloaded = run(serve, "config", "reload")
        assert reloaded.returncode == 0, reloaded.stderr
        assert "2 dids, 2 queues, 2 agents" in reloaded.stdout
        assert agents(serve)["ann"][0] == "on_call"  # the call goes on
        pbxctl(serve, "agent", "login", "bob")
        place_call(asterisk, BACK_DID)

        cdrs = await apoll(lambda: _cdrs(url, 2), timeout=20)
        by_did = {c.did: c for c in cdrs}
        assert {(c.disposition, c.agent_id) for c in cdrs} == {
            ("answered", "ann"),
            ("answered", "bob"),
        }
        first = by_did[FRONT_DID]
        assert first.answered_at is not None
        assert (first.ended_at - first.answered_at).total_seconds() >= 3.9  # its whole talk

        # Dropping bob while he is logged in: refused, nothing changed.
        apply_config(serve, tmp_path, BASE)
        refused = run(serve, "config", "reload")
        assert refused.returncode == 1
        assert "logged in" in refused.stderr
        assert agents(serve)["bob"][0] == "ready"

        # Logged out, he can go; SIGHUP does what `config reload` does.
        pbxctl(serve, "agent", "logout", "bob")
        assert serve.process is not None
        serve.process.send_signal(signal.SIGHUP)
        await poll(lambda: "bob" not in agents(serve), timeout=10)
        assert "configuration reloaded: 1 tenants, 1 DIDs, 1 queues, 1 agents" in serve.log()
        assert agents(serve)["ann"][0] == "ready"
    finally:
        asterisk.cli("dialplan set global BENCH_TALK 1")
        asterisk.cli("channel request hangup all")  # nothing for the next test to adopt
        serve.cleanup()


async def _cdrs(url: str, n: int) -> list[m.Cdr] | None:
    rows = await cdr_rows(url)
    return rows if len(rows) >= n else None
