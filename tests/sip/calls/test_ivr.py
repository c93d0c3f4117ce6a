"""The dial-in IVR (sip/calls/ivr.py) with a fake clock: the PIN flow a
caller goes through, its limits, and that no sequence of keys, prompt ends
and waits leaves it stuck or raising."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sip.calls.ivr import (
    GOODBYE_WAIT,
    KEY_WAIT,
    REPEATS,
    TRIES,
    Hangup,
    Ivr,
    Join,
    LookUp,
    Play,
    Stage,
    StopPrompt,
    Visit,
)
from sip.calls.prompts import PROMPTS, text

VISIT = Visit("b-1", recorded=False)
RECORDED = Visit("b-2", recorded=True)


def keys(ivr: Ivr, digits: str, now: float) -> list[object]:
    for key in digits:
        ivr.digit(key, now)
    return list(ivr.actions())


def test_a_caller_on_an_urdu_trunk_keys_the_pin_and_joins() -> None:
    ivr = Ivr("ur")
    ivr.answered(0.0)
    assert ivr.actions() == [Play("enter_pin", "ur")]
    # Keying over the prompt stops it; the PIN goes to the bridge at #.
    assert keys(ivr, "48210937#", 1.0) == [StopPrompt(), LookUp("48210937")]
    assert ivr.stage is Stage.CHECKING and ivr.get_timer() is None
    ivr.found(VISIT, 1.2)
    assert ivr.actions() == [Join(VISIT, "ur", consented=False)]
    ivr.joined(1.5)
    assert ivr.actions() == [Play("joined", "ur")] and ivr.stage is Stage.JOINED
    # From here on, keys are not the IVR's.
    assert keys(ivr, "12#", 2.0) == []


def test_the_menu_picks_the_language_by_key_or_by_default() -> None:
    ivr = Ivr(None)
    ivr.answered(0.0)
    assert ivr.actions() == [Play("language", "en")]
    assert keys(ivr, "3", 1.0) == [Play("enter_pin", "ar")]
    quiet = Ivr(None, default="ur")
    quiet.answered(0.0)
    quiet.actions()
    quiet.prompt_done(4.0)
    assert quiet.get_timer() == 4.0 + KEY_WAIT
    quiet.handle_timer(4.0 + KEY_WAIT)
    assert quiet.actions() == [Play("enter_pin", "ur")]


def test_star_starts_the_pin_again() -> None:
    ivr = Ivr("en")
    ivr.answered(0.0)
    ivr.prompt_done(3.0)
    assert keys(ivr, "999*48210937#", 4.0)[-1] == LookUp("48210937")


def test_three_wrong_pins_end_the_call_politely() -> None:
    ivr = Ivr("en")
    ivr.answered(0.0)
    for attempt in range(1, TRIES + 1):
        assert keys(ivr, "11111111#", float(attempt))[-1] == LookUp("11111111")
        ivr.wrong(attempt + 0.1)
        played = ivr.actions()
        if attempt < TRIES:
            assert played == [Play("wrong_pin", "en")] and ivr.stage is Stage.PIN
    assert played == [Play("wrong_pin_goodbye", "en")] and ivr.stage is Stage.GOODBYE
    ivr.prompt_done(9.0)
    assert ivr.actions() == [Hangup("wrong PIN")] and ivr.stage is Stage.ENDED
    assert ivr.tries == TRIES


def test_a_blocked_caller_hears_goodbye_and_the_call_ends_even_if_the_prompt_never_does() -> None:
    ivr = Ivr("ar")
    ivr.answered(0.0)
    keys(ivr, "12345678#", 1.0)
    ivr.blocked(1.1)
    assert ivr.actions() == [Play("blocked_goodbye", "ar")]
    assert ivr.get_timer() == 1.1 + GOODBYE_WAIT
    ivr.handle_timer(1.1 + GOODBYE_WAIT)
    assert ivr.actions() == [Hangup("blocked")]


def test_silence_repeats_the_prompt_then_ends_the_call() -> None:
    ivr = Ivr("en")
    ivr.answered(0.0)
    now, played = 0.0, [ivr.actions()]
    while ivr.stage is Stage.PIN:
        now += 3.0
        ivr.prompt_done(now)
        now = ivr.get_timer() or now
        ivr.handle_timer(now)
        played.append(ivr.actions())
    assert played[:REPEATS] == [[Play("enter_pin", "en")]] * REPEATS
    assert played[REPEATS] == [Play("goodbye", "en")]
    ivr.prompt_done(now + 5)
    assert ivr.actions() == [Hangup("no PIN keyed")]


def test_a_recorded_visit_is_joined_only_after_1() -> None:
    ivr = Ivr("en")
    ivr.answered(0.0)
    keys(ivr, "48210937#", 1.0)
    ivr.found(RECORDED, 1.1)
    assert ivr.actions() == [Play("recording_notice", "en")]
    assert keys(ivr, "29", 2.0) == []  # only 1 agrees
    assert keys(ivr, "1", 3.0) == [StopPrompt(), Join(RECORDED, "en", consented=True)]
    # A caller who never presses 1 is not joined.
    silent = Ivr("en")
    silent.answered(0.0)
    keys(silent, "48210937#", 1.0)
    silent.found(RECORDED, 1.1)
    now, played = 1.1, []
    while silent.stage is Stage.CONSENT:
        now += 6.0
        silent.prompt_done(now)
        now = silent.get_timer() or now
        silent.handle_timer(now)
        played += silent.actions()
    assert not any(isinstance(a, Join) for a in played)
    assert played[-1] == Play("goodbye", "en")


def test_a_room_that_refuses_the_caller_ends_the_call() -> None:
    ivr = Ivr("en")
    ivr.answered(0.0)
    keys(ivr, "48210937#", 1.0)
    ivr.found(VISIT, 1.1)
    ivr.actions()
    ivr.refused(1.5)
    assert ivr.actions() == [Play("cannot_join", "en")]
    ivr.prompt_done(4.0)
    assert ivr.actions() == [Hangup("room refused")]


def test_every_prompt_speaks_every_language() -> None:
    for prompt, texts in PROMPTS.items():
        assert set(texts) == {"en", "ur", "ar"}, prompt
        assert all(text(prompt, language) for language in texts)
    assert text("language", "ar").count("1") == 1 and "3" in text("language", "en")


_INPUTS = st.lists(
    st.one_of(
        st.sampled_from(list("0123456789*#ABCD")).map(lambda k: ("digit", k)),
        st.just(("done", "")),
        st.floats(0.0, 30.0).map(lambda dt: ("wait", dt)),
    ),
    max_size=80,
)


@given(_INPUTS, st.sampled_from(["en", "ur", None]))
def test_no_sequence_of_keys_prompts_and_waits_raises_or_leaves_it_stuck(
    inputs: list[tuple[str, object]], language: str | None
) -> None:
    """The bridge's side answers every ask at once: a PIN is wrong unless it
    is 48210937, whose visit is recorded; the room always takes the caller."""
    ivr = Ivr(language)
    now = 0.0
    ivr.answered(now)

    def serve() -> None:
        for action in ivr.actions():
            if isinstance(action, LookUp):
                if action.pin == "48210937":
                    ivr.found(RECORDED, now)
                else:
                    ivr.wrong(now)
            elif isinstance(action, Join):
                assert action.consented  # the visit is recorded
                ivr.joined(now)

    for kind, value in inputs:
        if ivr.stage in (Stage.ENDED, Stage.JOINED):
            break
        if kind == "digit":
            ivr.digit(str(value), now)
        elif kind == "done":
            ivr.prompt_done(now)
        else:
            now += float(str(value))
            ivr.handle_timer(now)
        serve()
    # Left alone (prompts end, time passes), every call ends or is joined.
    for _ in range(4 * REPEATS + 4):
        if ivr.stage in (Stage.ENDED, Stage.JOINED):
            break
        ivr.prompt_done(now)
        now = max(now, ivr.get_timer() or now)
        ivr.handle_timer(now)
        serve()
    assert ivr.stage in (Stage.ENDED, Stage.JOINED), ivr.stage
