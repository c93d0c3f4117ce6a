"""Active-speaker detection from RFC 6464 levels: smoothing, hysteresis, events."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rtc.rtp import extensions, packet
from sfu.feedback.speaker import SpeakerChanged, SpeakerDetector

AUDIO_LEVEL_ID = 1


def run(
    det: SpeakerDetector, levels: dict[str, int], start: float, seconds: float
) -> list[SpeakerChanged]:
    """Feed 20 ms packets at fixed levels and run the timer; the events."""
    events = []
    t = start
    while t < start + seconds:
        for who, level in levels.items():
            det.update(who, level < 127, level, t)
        timer = det.get_timer()
        if timer is not None and timer <= t:
            ev = det.handle_timer(t)
            if ev is not None:
                events.append(ev)
        t += 0.02
    return events


def test_levels_read_from_real_packets() -> None:
    p = packet.RtpPacket(payload_type=111, sequence_number=1, ssrc=5, payload=b"\xf8")
    p.set_extensions([(AUDIO_LEVEL_ID, bytes([0x80 | 30]))])
    voice, level = extensions.audio_level(bytes(p), AUDIO_LEVEL_ID) or (False, 127)
    det = SpeakerDetector()
    det.update("alice", voice, level, 0.0)
    assert det.score("alice", 0.0) == 97
    # hear() reads the same from the packet itself; none without the extension.
    heard = SpeakerDetector()
    assert heard.hear("alice", bytes(p), AUDIO_LEVEL_ID, 0.0)
    assert heard.score("alice", 0.0) == 97
    assert not heard.hear("alice", bytes(p), AUDIO_LEVEL_ID + 1, 0.0)
    assert not heard.hear("alice", b"\x90" + bytes(12), AUDIO_LEVEL_ID, 0.0)


def test_first_speaker_is_immediate_and_silence_keeps_them() -> None:
    det = SpeakerDetector()
    events = run(det, {"alice": 30, "bob": 120}, 0.0, 1.0)
    assert [e.speaker for e in events] == ["alice"]
    assert events[0].previous is None
    # Everyone silent: alice stays highlighted.
    assert run(det, {"alice": 127, "bob": 127}, 1.0, 3.0) == []
    assert det.speaker == "alice"


def test_switch_needs_margin_and_hold() -> None:
    det = SpeakerDetector(hold=0.6, margin=6.0)
    run(det, {"alice": 30, "bob": 120}, 0.0, 1.0)
    # Bob only slightly louder than alice: no switch (margin).
    assert run(det, {"alice": 30, "bob": 28}, 1.0, 3.0) == []
    # Bob clearly louder, alice quiet: switch after the window slides and the hold.
    events = run(det, {"alice": 110, "bob": 25}, 4.0, 3.0)
    assert [(e.speaker, e.previous) for e in events] == [("bob", "alice")]
    assert det.speaker == "bob"


def test_short_burst_does_not_steal() -> None:
    det = SpeakerDetector(window=0.5, hold=0.8)
    run(det, {"alice": 30, "bob": 120}, 0.0, 1.0)
    # Bob coughs for 0.3 s while alice is quiet.
    events = run(det, {"alice": 100, "bob": 10}, 1.0, 0.3)
    events += run(det, {"alice": 30, "bob": 120}, 1.3, 2.0)
    assert events == []
    assert det.speaker == "alice"


def test_speaker_leaving_hands_over() -> None:
    det = SpeakerDetector()
    run(det, {"alice": 30, "bob": 40}, 0.0, 1.0)
    assert det.speaker == "alice"
    ev = det.remove("alice", 1.0)
    assert ev is not None
    assert (ev.speaker, ev.previous) == ("bob", "alice")
    ev = det.remove("bob", 1.0)
    assert ev is not None
    assert ev.speaker is None
    assert det.remove("carol", 1.0) is None


def test_no_voice_flag_counts_as_silence_from_a_sender_that_sets_it() -> None:
    det = SpeakerDetector()
    det.update("alice", True, 10, 0.0)
    for i in range(1, 51):
        det.update("alice", False, 10, i * 0.02)
    assert det.score("alice", 1.5) == 0
    assert det.handle_timer(1.5) is None
    assert det.speaker is None


def test_levels_count_from_a_sender_that_never_sets_the_voice_flag() -> None:
    # aiortc leaves V clear on every packet; its levels must still elect it.
    det = SpeakerDetector()
    for i in range(50):
        det.update("bot", False, 10, i * 0.02)
    assert det.score("bot", 1.0) == 117
    ev = det.handle_timer(1.0)
    assert ev is not None
    assert ev.speaker == "bot"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(0, 127), st.booleans()),
        min_size=1,
        max_size=200,
    )
)
def test_events_chain_and_never_repeat(samples: list[tuple[str, int, bool]]) -> None:
    det = SpeakerDetector(interval=0.05)
    t = 0.0
    current = None
    for who, level, voice in samples:
        t += 0.01
        det.update(who, voice, level, t)
        timer = det.get_timer()
        if timer is not None and timer <= t:
            ev = det.handle_timer(t)
            if ev is not None:
                assert ev.previous == current
                assert ev.speaker != current
                current = ev.speaker
    assert det.speaker == current
