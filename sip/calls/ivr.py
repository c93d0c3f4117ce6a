"""What a caller hears and keys before joining a visit: the dial-in IVR.

A sans-I/O core, one per call. The bridge feeds it what happens
(:meth:`Ivr.receive` with one input each: the call answered, a digit in any
of the forms :mod:`sip.audio.dtmf` reads, a prompt finished playing, the
answer to a PIN lookup, the room joined) and the time; it answers with
actions (:class:`Play`, :class:`LookUp`, :class:`Join`, :class:`Hangup`) and
when it next wants :meth:`Ivr.handle_timer`. The lookup, the audit and the
rate limits are the bridge's: the IVR only asks and is told.

The machine (``TRANSITIONS``; states in :class:`Stage`):

* A call the bridge placed (dial-out) skips to ``checking`` once answered
  (:meth:`Ivr.dialled`): the bridge knows the visit already.
* ``language``: where the trunk's number names no language, the caller
  hears the menu in all three (English, Urdu, Arabic) and keys 1, 2 or 3;
  no key within :data:`KEY_WAIT` picks the trunk's default.
* ``pin``: "key your visit PIN, then #". Digits collect; ``#`` submits,
  ``*`` starts again. Nothing keyed for :data:`KEY_WAIT` after the prompt
  plays it again, at most :data:`REPEATS` times, then goodbye.
* ``checking``: the bridge looks the PIN up (:class:`LookUp`). A PIN that
  opens no visit now is a wrong try: "that PIN does not open a visit now"
  and back to ``pin``; the third wrong try (:data:`TRIES`) ends the call
  politely. A caller the bridge has blocked (too many wrong PINs from the
  number or the trunk) is told goodbye at once, whatever they keyed.
* ``consent``: for a recorded visit, the recording notice, and 1 to agree;
  no 1 after the notice has played :data:`REPEATS` times ends the call (the
  visit is not joined unrecorded behind the patient's back).
* ``joining`` until the room answers, then ``joined``: digits are no longer
  the IVR's.
* ``goodbye`` plays the last prompt and ends the call (:class:`Hangup`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from rtc.machine import move
from sip.errors import SipError

__all__ = [
    "KEY_WAIT",
    "LANGUAGES",
    "PIN_LENGTH",
    "REPEATS",
    "TRIES",
    "Hangup",
    "Ivr",
    "IvrError",
    "Join",
    "LookUp",
    "Play",
    "Stage",
    "StopPrompt",
    "Visit",
]

#: The languages the prompts speak, in the menu's order (keys 1, 2, 3).
LANGUAGES = ("en", "ur", "ar")
#: A visit's PIN: eight digits, always (booking's phone_pin).
PIN_LENGTH = 8
#: Wrong PINs a call may key before it is ended.
TRIES = 3
#: How often a prompt that waits for a key is played before the call ends.
REPEATS = 3
#: Seconds after a prompt finished (or the last key) before it is played again.
KEY_WAIT = 8.0
#: Seconds the last prompt has to play before the call ends even if the
#: media never says it finished.
GOODBYE_WAIT = 15.0


class IvrError(SipError):
    """The bridge fed the IVR an input its stage has no move for."""


class Stage(enum.Enum):
    LANGUAGE = "language"
    PIN = "pin"
    CHECKING = "checking"
    CONSENT = "consent"
    JOINING = "joining"
    JOINED = "joined"
    GOODBYE = "goodbye"
    ENDED = "ended"


class Step(enum.Enum):
    CHOSEN = "chosen"  # a language, keyed or by default
    SUBMIT = "submit"  # a PIN and #
    WRONG = "wrong"
    FOUND = "found"
    FOUND_RECORDED = "found recorded"
    AGREED = "agreed"
    JOINED = "joined"
    DIALLED = "dialled"  # a call the bridge placed: its visit is known
    GIVE_UP = "give up"  # too many tries, no key, blocked, refused
    DONE = "done"  # the last prompt played


_G = Stage
TRANSITIONS: dict[tuple[Stage, Step], Stage] = {
    (_G.LANGUAGE, Step.CHOSEN): _G.PIN,
    (_G.LANGUAGE, Step.DIALLED): _G.CHECKING,
    (_G.LANGUAGE, Step.GIVE_UP): _G.GOODBYE,
    (_G.PIN, Step.SUBMIT): _G.CHECKING,
    (_G.PIN, Step.GIVE_UP): _G.GOODBYE,
    (_G.CHECKING, Step.WRONG): _G.PIN,
    (_G.CHECKING, Step.FOUND): _G.JOINING,
    (_G.CHECKING, Step.FOUND_RECORDED): _G.CONSENT,
    (_G.CHECKING, Step.GIVE_UP): _G.GOODBYE,
    (_G.CONSENT, Step.AGREED): _G.JOINING,
    (_G.CONSENT, Step.GIVE_UP): _G.GOODBYE,
    (_G.JOINING, Step.JOINED): _G.JOINED,
    (_G.JOINING, Step.GIVE_UP): _G.GOODBYE,
    (_G.GOODBYE, Step.DONE): _G.ENDED,
}


# -- what the bridge tells the IVR ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Visit:
    """The visit a PIN opened: whether it is recorded (the caller must agree
    first), and what the bridge needs back to join it."""

    booking_id: str
    recorded: bool


# -- what the IVR asks of the bridge ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Play:
    """Play ``prompt`` (a key of :mod:`sip.calls.prompts`) in ``language``;
    the bridge says when it finished (:meth:`Ivr.prompt_done`). Any prompt
    playing stops first."""

    prompt: str
    language: str


@dataclass(frozen=True, slots=True)
class StopPrompt:
    """Stop the prompt playing: the caller keyed over it (one who knows the
    PIN need not hear the prompt out)."""


@dataclass(frozen=True, slots=True)
class LookUp:
    """Which visit does ``pin`` open now? Answer with :meth:`Ivr.found`,
    :meth:`Ivr.wrong` or :meth:`Ivr.blocked`. The bridge counts and audits
    a wrong one and rate-limits the number and the trunk."""

    pin: str


@dataclass(frozen=True, slots=True)
class Join:
    """Join ``visit``'s room as a phone participant; ``consented`` when the
    caller pressed 1 to the recording notice. Answer with :meth:`Ivr.joined`
    or :meth:`Ivr.refused`."""

    visit: Visit
    language: str
    consented: bool


@dataclass(frozen=True, slots=True)
class Hangup:
    """End the call (BYE): ``reason`` says why, for the metrics and the log."""

    reason: str


Action = Play | StopPrompt | LookUp | Join | Hangup


class Ivr:
    """One call's IVR. ``language``: the trunk's own (its number's) language,
    None to ask with the three-language menu."""

    def __init__(self, language: str | None, default: str = "en") -> None:
        self.stage = _G.LANGUAGE
        self.language = language or default
        self._ask_language = language is None
        self.digits = ""
        self.tries = 0
        #: Why the call ended, once it did.
        self.reason = ""
        self.visit: Visit | None = None
        self._plays = 0
        self._prompt = ""
        self._playing = False
        self._due: float | None = None
        self._actions: list[Action] = []

    # -- inputs ---------------------------------------------------------------------

    def answered(self, now: float) -> None:
        """The call was answered: the first prompt plays."""
        if self._ask_language:
            self._play("language", now)
        else:
            self._move(Step.CHOSEN)
            self._play("enter_pin", now)

    def dialled(self) -> None:
        """A call the bridge placed was answered: no menu and no PIN, its
        visit is known; the bridge goes on with :meth:`found` (or
        :meth:`refused`) as for a PIN it looked up."""
        self._move(Step.DIALLED)

    def digit(self, key: str, now: float) -> None:
        """One key the caller pressed, counted once whatever form it came in."""
        if self.stage is _G.LANGUAGE:
            if key in ("1", "2", "3"):
                self.language = LANGUAGES[int(key) - 1]
                self._move(Step.CHOSEN)
                self._play("enter_pin", now)
        elif self.stage is _G.PIN:
            self._stop_prompt()
            if key == "#":
                if self.digits:
                    pin, self.digits = self.digits, ""
                    self._move(Step.SUBMIT)
                    self._due = None
                    self._actions.append(LookUp(pin))
                    return
            elif key == "*":
                self.digits = ""
            elif key.isdigit() and len(self.digits) < 2 * PIN_LENGTH:
                # Room for a caller who keys more than the PIN before the #:
                # the lookup says it is wrong, counted as one try.
                self.digits += key
            self._due = now + KEY_WAIT
        elif self.stage is _G.CONSENT and key == "1":
            assert self.visit is not None
            self._move(Step.AGREED)
            self._stop_prompt()
            self._due = None
            self._actions.append(Join(self.visit, self.language, consented=True))
        # Other keys, and every key once joining, are not the IVR's.

    def prompt_done(self, now: float) -> None:
        """The prompt the IVR asked for finished playing."""
        self._playing = False
        if self.stage is _G.GOODBYE:
            self._end()
        elif self.stage in (_G.LANGUAGE, _G.PIN, _G.CONSENT):
            self._due = now + KEY_WAIT

    def found(self, visit: Visit, now: float) -> None:
        """The PIN opened ``visit``."""
        self.visit = visit
        if visit.recorded:
            self._move(Step.FOUND_RECORDED)
            self._plays = 0
            self._play("recording_notice", now)
        else:
            self._move(Step.FOUND)
            self._actions.append(Join(visit, self.language, consented=False))

    def wrong(self, now: float) -> None:
        """The PIN opens no visit now."""
        self.tries += 1
        if self.tries >= TRIES:
            self._goodbye("wrong_pin_goodbye", "wrong PIN", now, step=Step.GIVE_UP)
            return
        self._move(Step.WRONG)
        self._plays = 0
        self._play("wrong_pin", now)

    def blocked(self, now: float) -> None:
        """Too many wrong PINs from this number or trunk: no more tries."""
        self._goodbye("blocked_goodbye", "blocked", now, step=Step.GIVE_UP)

    def joined(self, now: float) -> None:
        """The room took the caller."""
        self._move(Step.JOINED)
        self._play("joined", now)

    def refused(self, now: float) -> None:
        """The room would not take the caller (the visit ended, it is full)."""
        self._goodbye("cannot_join", "room refused", now, step=Step.GIVE_UP)

    def handle_timer(self, now: float) -> None:
        if self._due is None or now < self._due:
            return
        self._due = None
        if self.stage is _G.GOODBYE:
            self._end()  # the media never said the last prompt ended
        elif self.stage is _G.LANGUAGE:
            self._move(Step.CHOSEN)  # the trunk's default
            self._play("enter_pin", now)
        elif self.stage in (_G.PIN, _G.CONSENT):
            if self._plays >= REPEATS:
                why = "no PIN keyed" if self.stage is _G.PIN else "no consent"
                self._goodbye("goodbye", why, now, step=Step.GIVE_UP)
            else:
                self.digits = ""
                self._play(self._prompt, now)

    # -- outputs --------------------------------------------------------------------

    def actions(self) -> list[Action]:
        """What to do now, in order."""
        out, self._actions = self._actions, []
        return out

    def get_timer(self) -> float | None:
        return self._due

    # -- the machine ----------------------------------------------------------------

    def _move(self, step: Step) -> None:
        self.stage = move(TRANSITIONS, self.stage, step, IvrError)

    def _play(self, prompt: str, now: float) -> None:
        if prompt != self._prompt:
            self._plays = 0
        self._prompt = prompt
        self._plays += 1
        self._playing = True
        # Until the media says the prompt ended, no key wait runs; the
        # goodbye timer still guards a prompt that never ends.
        self._due = now + GOODBYE_WAIT if self.stage is _G.GOODBYE else None
        self._actions.append(Play(prompt, self.language))

    def _stop_prompt(self) -> None:
        if self._playing:
            self._playing = False
            self._actions.append(StopPrompt())

    def _goodbye(self, prompt: str, reason: str, now: float, *, step: Step) -> None:
        self._move(step)
        self.reason = reason
        self._play(prompt, now)

    def _end(self) -> None:
        self._move(Step.DONE)
        self._due = None
        self._actions.append(Hangup(self.reason))
