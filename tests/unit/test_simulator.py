"""The simulator drives the real Router and AgentBoard with random traffic.

For one skill and FIFO it must reproduce Erlang C (the 80/20 example,
A = 10 erlangs: 200 calls an hour of 3 minutes, with 13 and 14 agents).
Over 20 seeds of this very run (500 simulated hours, ~100,000 calls) the
service level's error against Erlang C had a standard deviation of 0.9
percentage points with 13 agents and 0.6 with 14 (worst 2.2: one seed of
20 beyond 2), the ASA's 1.3 s and 0.6 s (worst 3.2 s, 1.8 % of the AHT);
seed 0 below is the first one, not a chosen one. The ASA is compared
within 2 % of the AHT: a tighter relative bound would need millions of
calls, the wait's variance is that large.
"""

from __future__ import annotations

import pytest

from pbx_controller.core import kpi
from pbx_controller.core.model import (
    AgentProfile,
    Queue,
    QueueMembership,
    SkillRequirement,
    Strategy,
)
from pbx_controller.sim import Report, SimConfig, Traffic, simulate

HOUR = 3_600_000
AHT = 180_000
T = 20_000


def single_skill(agents: int, *, patience_ms: int | None = None) -> SimConfig:
    queue = Queue("sales", "acme", wrapup_ms=0, service_level_ms=T)
    profiles = tuple(
        AgentProfile(
            f"a{i:02d}", f"Agent {i}", f"PJSIP/a{i}", memberships=(QueueMembership("sales"),)
        )
        for i in range(agents)
    )
    traffic = (Traffic("sales", 200, AHT, mean_patience_ms=patience_ms),)
    return SimConfig((queue,), profiles, traffic, warmup_ms=HOUR)


@pytest.mark.parametrize("agents", [13, 14])
def test_fifo_single_skill_reproduces_erlang_c(agents: int) -> None:
    load = 200 * AHT / HOUR  # 10 erlangs
    expected_sl = kpi.service_level(load, agents, AHT, T)
    expected_asa = kpi.average_speed_of_answer(load, agents, AHT)
    report = simulate(single_skill(agents), seed=0, duration_ms=500 * HOUR)
    got = report.queues["sales"]
    assert got.kpis.offered == pytest.approx(200 * 499, rel=0.02)
    assert got.kpis.abandoned == 0
    assert got.kpis.aht_ms == pytest.approx(AHT, rel=0.01)
    assert got.service_level is not None
    assert got.asa_ms is not None
    # Service level within 2 percentage points; ASA within 2 % of the AHT (3.6 s).
    assert got.service_level == pytest.approx(expected_sl, abs=0.02)
    assert got.asa_ms == pytest.approx(expected_asa, abs=0.02 * AHT)
    assert report.occupancy == pytest.approx(kpi.occupancy(load, agents), abs=0.01)


def test_abandonment_matches_erlang_a() -> None:
    expected = kpi.erlang_a(10, 11, AHT, 120_000)
    report = simulate(single_skill(11, patience_ms=120_000), seed=0, duration_ms=100 * HOUR)
    got = report.queues["sales"].kpis
    assert got.abandonment_rate == pytest.approx(expected.p_abandon, abs=0.02)
    assert report.occupancy == pytest.approx(expected.occupancy, abs=0.02)


def two_languages(*, pooled: bool) -> SimConfig:
    queues = (
        Queue("en", "acme", skills=(SkillRequirement("english", 5),), wrapup_ms=0),
        Queue("es", "globex", skills=(SkillRequirement("spanish", 5),), wrapup_ms=0),
    )
    members = (QueueMembership("en"), QueueMembership("es"))
    profiles = []
    for i in range(14):
        # Pooled: everyone speaks both. Split: half English-only, half Spanish-only.
        if pooled:
            skills = {"english": 6, "spanish": 6}
        else:
            skills = {"english": 6} if i % 2 else {"spanish": 6}
        profiles.append(AgentProfile(f"a{i}", f"A{i}", f"PJSIP/a{i}", skills, members))
    traffic = (Traffic("en", 100, AHT), Traffic("es", 100, AHT))
    return SimConfig(queues, tuple(profiles), traffic, warmup_ms=HOUR)


def test_multi_skill_reports_per_queue_and_pooling_helps() -> None:
    split = simulate(two_languages(pooled=False), seed=0, duration_ms=100 * HOUR)
    pooled = simulate(two_languages(pooled=True), seed=0, duration_ms=100 * HOUR)
    assert split.queues.keys() == pooled.queues.keys() == {"en", "es"}
    for queue_id in ("en", "es"):
        s, p = split.queues[queue_id], pooled.queues[queue_id]
        assert s.threshold_ms == T
        assert s.kpis.offered > 9_500
        assert s.service_level is not None
        assert p.service_level is not None
        # Split, each language is its own M/M/7 at 5 erlangs; pooled, one M/M/14 at 10.
        # (10,000 calls a queue: over 8 seeds the split queues strayed up to 3.4 points.)
        assert s.service_level == pytest.approx(kpi.service_level(5, 7, AHT, T), abs=0.04)
        assert p.service_level == pytest.approx(kpi.service_level(10, 14, AHT, T), abs=0.03)
        assert p.service_level > s.service_level + 0.1


def test_ring_all_with_misses_auto_pause_and_abandons_accounts_for_every_call() -> None:
    queue = Queue(
        "ring", "acme", strategy=Strategy.RING_ALL, wrapup_ms=5_000, ring_timeout_ms=10_000
    )
    profiles = tuple(
        AgentProfile(f"r{i}", "r", f"PJSIP/r{i}", memberships=(QueueMembership("ring"),))
        for i in range(6)
    )
    config = SimConfig(
        (queue,),
        profiles,
        (Traffic("ring", 60, 120_000, mean_patience_ms=90_000),),
        answer_delay_ms=4_000,
        miss_probability=0.3,
        auto_pause_after=2,
    )
    report = simulate(config, seed=1, duration_ms=20 * HOUR)
    got = report.queues["ring"].kpis
    assert got.offered == got.answered + got.abandoned
    assert got.offered == pytest.approx(60 * 20, rel=0.1)
    assert report.missed_offers > 0
    assert report.auto_pauses > 0
    assert report.offers > got.answered  # re-queued calls were offered again
    assert got.asa_ms is not None
    assert got.asa_ms >= 2_000  # nobody answers faster than half the answer delay


def test_same_seed_same_report_other_seed_other_report() -> None:
    config = single_skill(12, patience_ms=60_000)
    first = simulate(config, seed=42, duration_ms=20 * HOUR)
    assert simulate(config, seed=42, duration_ms=20 * HOUR) == first
    assert simulate(config, seed=43, duration_ms=20 * HOUR) != first


def test_nonsense_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown queues"):
        SimConfig((Queue("a", "t"),), (), (Traffic("b", 10, 1_000),))
    with pytest.raises(ValueError, match="warmup"):
        simulate(single_skill(1), seed=0, duration_ms=HOUR)
    with pytest.raises(ValueError, match="positive"):
        Traffic("a", 0, 1_000)


def test_report_is_a_plain_value() -> None:
    report = simulate(single_skill(12), seed=5, duration_ms=3 * HOUR)
    assert isinstance(report, Report)
    assert report.state_records >= 12  # at least every agent's login
    assert report.end_ms >= 3 * HOUR - HOUR


def test_the_package_exports_the_simulator() -> None:
    from pbx_controller import sim
    from pbx_controller.sim import simulator

    public = {
        name
        for name, value in vars(simulator).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == simulator.__name__
    }
    assert public <= set(sim.__all__), public - set(sim.__all__)
