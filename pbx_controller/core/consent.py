"""Recording consent: a transition table, and the one rule that matters.

A call may be recorded only while its consent is GRANTED and the agent on
it has consented too (employment terms). Every other state, including a
state this module has never heard of, means: do not record.

Policies (per tenant):
- off:     never ask, never record.
- notify:  implied consent. An announcement says the call is recorded and
           which digit opts out; staying on the line after it is consent.
- opt_in:  explicit consent. The agree digit grants; silence, a timeout or
           any other digit declines. The call gets full service either way.

Withdrawal (the opt-out digit during the call, an agent, or ops) moves a
granted call to WITHDRAWN: the recording stops at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from pbx_controller.core.machine import TransitionTable


class ConsentPolicy(Enum):
    OFF = "off"
    NOTIFY = "notify"
    OPT_IN = "opt_in"


class ConsentState(Enum):
    UNKNOWN = "unknown"
    NOT_ASKED = "not_asked"  # policy off
    ANNOUNCED = "announced"
    GRANTED = "granted"
    DECLINED = "declined"
    WITHDRAWN = "withdrawn"


class ConsentInput(Enum):
    SKIP = "skip"  # policy off: nothing is announced
    ANNOUNCE = "announce"
    ANNOUNCEMENT_DONE = "announcement_done"
    AGREE_DIGIT = "agree_digit"
    OPT_OUT_DIGIT = "opt_out_digit"
    OTHER_DIGIT = "other_digit"
    TIMEOUT = "timeout"
    WITHDRAW = "withdraw"


C = ConsentState
I = ConsentInput  # noqa: E741 - a table reads better with short names

CONSENT_TRANSITIONS: TransitionTable[ConsentState] = TransitionTable(
    "consent",
    {
        (C.UNKNOWN, I.SKIP.value): frozenset({C.NOT_ASKED}),
        (C.UNKNOWN, I.ANNOUNCE.value): frozenset({C.ANNOUNCED}),
        # A caller who hangs up or is connected before any announcement.
        (C.UNKNOWN, I.TIMEOUT.value): frozenset({C.DECLINED}),
        # notify: staying on the line grants; opt_in: still waiting for a digit.
        (C.ANNOUNCED, I.ANNOUNCEMENT_DONE.value): frozenset({C.GRANTED, C.ANNOUNCED}),
        (C.ANNOUNCED, I.AGREE_DIGIT.value): frozenset({C.GRANTED, C.ANNOUNCED}),
        (C.ANNOUNCED, I.OPT_OUT_DIGIT.value): frozenset({C.DECLINED}),
        (C.ANNOUNCED, I.OTHER_DIGIT.value): frozenset({C.ANNOUNCED, C.DECLINED}),
        (C.ANNOUNCED, I.TIMEOUT.value): frozenset({C.DECLINED, C.GRANTED}),
        (C.ANNOUNCED, I.WITHDRAW.value): frozenset({C.DECLINED}),
        (C.UNKNOWN, I.WITHDRAW.value): frozenset({C.DECLINED}),
        (C.GRANTED, I.OPT_OUT_DIGIT.value): frozenset({C.WITHDRAWN}),
        (C.GRANTED, I.WITHDRAW.value): frozenset({C.WITHDRAWN}),
        # Digits after the decision are the caller's business (menus, card
        # numbers), not consent; a declined or withdrawn call stays so.
        (C.GRANTED, I.AGREE_DIGIT.value): frozenset({C.GRANTED}),
        (C.GRANTED, I.OTHER_DIGIT.value): frozenset({C.GRANTED}),
        (C.DECLINED, I.AGREE_DIGIT.value): frozenset({C.DECLINED}),
        (C.DECLINED, I.OPT_OUT_DIGIT.value): frozenset({C.DECLINED}),
        (C.DECLINED, I.OTHER_DIGIT.value): frozenset({C.DECLINED}),
        (C.DECLINED, I.WITHDRAW.value): frozenset({C.DECLINED}),
        (C.WITHDRAWN, I.AGREE_DIGIT.value): frozenset({C.WITHDRAWN}),
        (C.WITHDRAWN, I.OPT_OUT_DIGIT.value): frozenset({C.WITHDRAWN}),
        (C.WITHDRAWN, I.OTHER_DIGIT.value): frozenset({C.WITHDRAWN}),
        (C.WITHDRAWN, I.WITHDRAW.value): frozenset({C.WITHDRAWN}),
        (C.NOT_ASKED, I.WITHDRAW.value): frozenset({C.NOT_ASKED}),
        (C.NOT_ASKED, I.OTHER_DIGIT.value): frozenset({C.NOT_ASKED}),
        (C.NOT_ASKED, I.AGREE_DIGIT.value): frozenset({C.NOT_ASKED}),
        (C.NOT_ASKED, I.OPT_OUT_DIGIT.value): frozenset({C.NOT_ASKED}),
    },
)


class WithdrawalPolicy(Enum):
    """What happens to a recording when consent is withdrawn mid-call."""

    DELETE = "delete"  # erase all of it
    KEEP_UNTIL_WITHDRAWAL = "keep_until_withdrawal"  # keep what came before


DIGITS = frozenset("0123456789*#")


@dataclass(frozen=True, slots=True)
class ConsentRules:
    policy: ConsentPolicy
    agree_digit: str = "1"
    opt_out_digit: str = "9"
    prompt_version: str = "v1"
    # opt_in: how long we wait for the agree digit after the announcement.
    answer_timeout_ms: int = 5000
    # Asterisk media URIs of the announcement; empty: the default for the policy.
    prompt: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("agree_digit", "opt_out_digit"):
            if getattr(self, name) not in DIGITS:
                raise ValueError(f"{name} must be one DTMF digit (0-9, * or #)")
        if self.agree_digit == self.opt_out_digit:
            raise ValueError("agree_digit and opt_out_digit must differ")
        if self.answer_timeout_ms <= 0:
            raise ValueError("answer_timeout_ms must be positive")

    def prompt_media(self) -> tuple[str, ...]:
        """What the caller hears. The stock prompts (core sounds) are a
        placeholder: a tenant records its own, in its language."""
        if self.prompt:
            return self.prompt
        if self.policy is ConsentPolicy.NOTIFY:
            # "This call is now being recorded. Press <opt-out digit> (to opt out)."
            return ("sound:conf-now-recording", "sound:vm-press", f"digits:{self.opt_out_digit}")
        # "Press <agree digit>" (to agree to the recording).
        return ("sound:vm-press", f"digits:{self.agree_digit}")


# The core's default: never ask, never record (frozen, so safe to share).
NEVER_RECORD = ConsentRules(ConsentPolicy.OFF)


@dataclass(frozen=True, slots=True)
class RecordingRules:
    """How a tenant's consented recordings are kept."""

    # Besides the WAV, which is always written: "mp3", "opus" (need ffmpeg).
    formats: tuple[str, ...] = ()
    withdrawal: WithdrawalPolicy = WithdrawalPolicy.DELETE
    retention_days: int = 90

    def __post_init__(self) -> None:
        for fmt in self.formats:
            if fmt not in ("mp3", "opus"):
                raise ValueError(
                    f"recording format {fmt!r}: choose mp3 or opus (WAV is always kept)"
                )
        if self.retention_days <= 0:
            raise ValueError("retention_days must be positive")


@dataclass(frozen=True, slots=True)
class ConsentEvidence:
    """What proves the outcome: kept with the recording and the CDR."""

    policy: ConsentPolicy
    prompt_version: str
    state: ConsentState
    digit: str | None
    at: datetime | None
    channel_id: str | None


@dataclass
class Consent:
    """The consent of one call's caller. Mutated only through `apply`."""

    rules: ConsentRules
    state: ConsentState = ConsentState.UNKNOWN
    digit: str | None = None
    decided_at: datetime | None = None
    channel_id: str | None = None
    history: list[tuple[ConsentInput, ConsentState]] = field(default_factory=list)

    def start(self, now: datetime) -> ConsentState:
        """Policy off skips the question; otherwise the announcement begins."""
        step = I.SKIP if self.rules.policy is ConsentPolicy.OFF else I.ANNOUNCE
        return self._go(step, C.NOT_ASKED if step is I.SKIP else C.ANNOUNCED, now)

    def digit_pressed(self, digit: str, channel_id: str, now: datetime) -> ConsentState:
        step = self._classify(digit)
        target = self._target_for_digit(step)
        if target is not self.state and self.state in (C.ANNOUNCED, C.GRANTED):
            self.digit, self.channel_id = digit, channel_id
        return self._go(step, target, now)

    def announcement_done(self, now: datetime) -> ConsentState:
        target = C.GRANTED if self.rules.policy is ConsentPolicy.NOTIFY else C.ANNOUNCED
        return self._go(I.ANNOUNCEMENT_DONE, target, now)

    def timed_out(self, now: datetime) -> ConsentState:
        # notify: no opt-out digit while we waited is consent; opt_in: refusal.
        target = (
            C.GRANTED
            if self.rules.policy is ConsentPolicy.NOTIFY and self.state is C.ANNOUNCED
            else C.DECLINED
        )
        return self._go(I.TIMEOUT, target, now)

    def withdraw(self, now: datetime) -> ConsentState:
        """The caller, the agent or ops says no more recording."""
        if self.state is C.GRANTED:
            target = C.WITHDRAWN
        elif self.state in (C.UNKNOWN, C.ANNOUNCED):
            target = C.DECLINED  # withdrawn before it was given: never record
        else:
            target = self.state
        return self._go(I.WITHDRAW, target, now)

    def evidence(self) -> ConsentEvidence:
        return ConsentEvidence(
            self.rules.policy,
            self.rules.prompt_version,
            self.state,
            self.digit,
            self.decided_at,
            self.channel_id,
        )

    # -- internals -----------------------------------------------------------

    def _classify(self, digit: str) -> ConsentInput:
        if digit == self.rules.opt_out_digit:
            return I.OPT_OUT_DIGIT
        if digit == self.rules.agree_digit:
            return I.AGREE_DIGIT
        return I.OTHER_DIGIT

    def _target_for_digit(self, step: ConsentInput) -> ConsentState:
        if self.state is C.ANNOUNCED:
            opt_in = self.rules.policy is ConsentPolicy.OPT_IN
            if step is I.OPT_OUT_DIGIT:
                return C.DECLINED
            if step is I.AGREE_DIGIT and opt_in:
                return C.GRANTED
            # opt_in: any other digit is no consent; notify: digits other
            # than the opt-out change nothing.
            return C.DECLINED if opt_in else C.ANNOUNCED
        if self.state is C.GRANTED and step is I.OPT_OUT_DIGIT:
            return C.WITHDRAWN
        return self.state

    def _go(self, step: ConsentInput, target: ConsentState, now: datetime) -> ConsentState:
        if now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        new = CONSENT_TRANSITIONS.move(self.state, step.value, target)
        if new is not self.state and new in (C.GRANTED, C.DECLINED, C.WITHDRAWN, C.NOT_ASKED):
            self.decided_at = now
        self.state = new
        self.history.append((step, new))
        return new


def recording_allowed(consent: Consent | None, agent_consents: bool) -> bool:
    """The only gate for StartRecording: granted caller consent and a
    consenting agent. Anything unknown is a no."""
    return consent is not None and consent.state is ConsentState.GRANTED and agent_consents
