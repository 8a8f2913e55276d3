"""A discrete-event simulator that drives the pure routing core with random
traffic (seeded), to check it against Erlang C and to compare set-ups."""

from pbx_controller.sim.simulator import QueueReport, Report, SimConfig, Traffic, simulate

__all__ = ["QueueReport", "Report", "SimConfig", "Traffic", "simulate"]
