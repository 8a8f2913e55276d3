"""Consent: the table, the policies, and the property that no sequence of
inputs allows recording outside GRANTED with a consenting agent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbx_controller.core.consent import (
    CONSENT_TRANSITIONS,
    Consent,
    ConsentPolicy,
    ConsentRules,
    ConsentState,
    recording_allowed,
)
from pbx_controller.core.machine import InvalidTransition

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def consent(policy: ConsentPolicy) -> Consent:
    return Consent(ConsentRules(policy, agree_digit="1", opt_out_digit="9"))


def test_off_never_records() -> None:
    c = consent(ConsentPolicy.OFF)
    assert c.start(T0) is ConsentState.NOT_ASKED
    c.digit_pressed("1", "ch", T0)
    assert not recording_allowed(c, agent_consents=True)


def test_notify_staying_on_the_line_grants_with_evidence() -> None:
    c = consent(ConsentPolicy.NOTIFY)
    c.start(T0)
    c.digit_pressed("5", "ch", T0 + timedelta(seconds=1))  # not the opt-out digit
    assert c.state is ConsentState.ANNOUNCED
    assert c.announcement_done(T0 + timedelta(seconds=4)) is ConsentState.GRANTED
    assert recording_allowed(c, agent_consents=True)
    assert not recording_allowed(c, agent_consents=False)
    ev = c.evidence()
    assert (ev.policy, ev.state, ev.at) == (
        ConsentPolicy.NOTIFY,
        ConsentState.GRANTED,
        T0 + timedelta(seconds=4),
    )


def test_notify_opt_out_declines_and_later_digits_do_not_revive_it() -> None:
    c = consent(ConsentPolicy.NOTIFY)
    c.start(T0)
    assert c.digit_pressed("9", "caller-1", T0 + timedelta(seconds=2)) is ConsentState.DECLINED
    c.digit_pressed("1", "caller-1", T0 + timedelta(seconds=3))
    assert c.state is ConsentState.DECLINED
    assert (c.evidence().digit, c.evidence().channel_id) == ("9", "caller-1")


@pytest.mark.parametrize(
    ("digit", "expected"),
    [("1", ConsentState.GRANTED), ("5", ConsentState.DECLINED), ("9", ConsentState.DECLINED)],
)
def test_opt_in_digits(digit: str, expected: ConsentState) -> None:
    c = consent(ConsentPolicy.OPT_IN)
    c.start(T0)
    c.announcement_done(T0)
    assert c.digit_pressed(digit, "ch", T0 + timedelta(seconds=1)) is expected


def test_opt_in_silence_declines() -> None:
    c = consent(ConsentPolicy.OPT_IN)
    c.start(T0)
    c.announcement_done(T0)
    assert c.timed_out(T0 + timedelta(seconds=5)) is ConsentState.DECLINED
    assert not recording_allowed(c, agent_consents=True)


def test_withdrawal_after_grant_and_before_it() -> None:
    granted = consent(ConsentPolicy.NOTIFY)
    granted.start(T0)
    granted.announcement_done(T0)
    assert granted.digit_pressed("9", "ch", T0) is ConsentState.WITHDRAWN
    asked = consent(ConsentPolicy.OPT_IN)
    asked.start(T0)
    assert asked.withdraw(T0) is ConsentState.DECLINED


def test_naive_time_is_refused_and_table_gaps_raise() -> None:
    c = consent(ConsentPolicy.NOTIFY)
    with pytest.raises(ValueError, match="aware"):
        c.start(datetime(2026, 1, 1))
    c.start(T0)
    with pytest.raises(InvalidTransition):
        c.start(T0)  # announcing twice is not in the table


STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("digit"), st.sampled_from("0123456789*#")),
        st.tuples(st.sampled_from(["done", "timeout", "withdraw", "start"]), st.none()),
    ),
    max_size=12,
)


@settings(max_examples=400, deadline=None)
@given(policy=st.sampled_from(list(ConsentPolicy)), steps=STEPS, agent=st.booleans())
def test_no_sequence_records_without_consent(
    policy: ConsentPolicy, steps: list[tuple[str, str | None]], agent: bool
) -> None:
    c = consent(policy)
    now = T0
    for kind, digit in steps:
        now += timedelta(milliseconds=250)
        try:
            if kind == "digit":
                assert digit is not None
                c.digit_pressed(digit, "ch", now)
            elif kind == "done":
                c.announcement_done(now)
            elif kind == "timeout":
                c.timed_out(now)
            elif kind == "withdraw":
                c.withdraw(now)
            else:
                c.start(now)
        except InvalidTransition as exc:
            refused = (exc.state, exc.event)
        else:
            refused = None
        if refused is not None:
            # Refused only where the table has no edge: the code and table agree.
            assert not CONSENT_TRANSITIONS.allows(*refused)  # type: ignore[arg-type]
        allowed = recording_allowed(c, agent)
        assert allowed == (c.state is ConsentState.GRANTED and agent)
        if policy is ConsentPolicy.OFF:
            assert not allowed
        if allowed and policy is ConsentPolicy.OPT_IN:
            # Explicit consent: the agree digit is on record.
            assert c.evidence().digit == "1"
        if ConsentState.WITHDRAWN in [s for _, s in c.history]:
            assert c.state is ConsentState.WITHDRAWN
