"""Simulcast cores (sfu.forward.simulcast): layer choice, allocation by priority,
VP8 PictureID/TL0PICIDX continuity across layer switches."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from sfu.forward.simulcast import (
    AUDIO_BITRATE,
    Layer,
    Vp8Rewriter,
    Wanted,
    allocate,
    choose,
    layers_by_rid,
    vp8_picture,
    vp8_temporal_id,
)

LAYERS = layers_by_rid(["q", "h", "f"], {"q": (320, 180), "h": (640, 360), "f": (1280, 720)})


def test_default_layers_follow_libwebrtcs_targets() -> None:
    assert [(layer.rid, layer.bitrate) for layer in LAYERS] == [
        ("q", 150_000),
        ("h", 500_000),
        ("f", 1_700_000),
    ]


def test_choose_by_budget_and_tile() -> None:
    assert choose(LAYERS, 5_000_000, 0, 0) == 2
    assert choose(LAYERS, 5_000_000, 1280, 720) == 2
    # A thumbnail gets the low layer however much bandwidth there is.
    assert choose(LAYERS, 5_000_000, 160, 90) == 0
    assert choose(LAYERS, 5_000_000, 400, 225) == 1
    assert choose(LAYERS, 400_000, 1280, 720) == 0
    assert choose(LAYERS, 100_000, 1280, 720) is None
    paused_top = [
        Layer(x.index, x.rid, x.width, x.height, x.bitrate, active=x.index < 2) for x in LAYERS
    ]
    assert choose(paused_top, 5_000_000, 1280, 720) == 1


def test_allocate_gives_audio_then_screen_then_speaker() -> None:
    cam_a = Wanted("cam-a", LAYERS, width=640, height=360)
    cam_b = Wanted("cam-b", LAYERS, speaker=True, width=1280, height=720)
    screen = Wanted("screen", [Layer(0, "", 1920, 1080, 1_200_000)], screen=True)
    # 2 audio tracks, then the screen, then the speaker's lowest layer, then a's.
    budget = 2 * AUDIO_BITRATE + 1_200_000 + 150_000 + 150_000
    assert allocate(budget, [cam_a, cam_b, screen], audio_tracks=2) == {
        "screen": 0,
        "cam-b": 0,
        "cam-a": 0,
    }
    more = budget + 350_000
    assert allocate(more, [cam_a, cam_b, screen], audio_tracks=2)["cam-b"] == 1
    # Too little for any video: audio only.
    assert allocate(80_000, [cam_a, cam_b], audio_tracks=1) == {"cam-a": None, "cam-b": None}


def test_hidden_tiles_get_nothing() -> None:
    hidden = Wanted("cam", LAYERS, visible=False)
    assert allocate(10_000_000, [hidden]) == {"cam": None}


@given(st.floats(0, 10_000_000), st.lists(st.booleans(), min_size=1, max_size=4))
def test_allocation_never_exceeds_the_budget(budget: float, speakers: list[bool]) -> None:
    wanted = [Wanted(f"t{i}", LAYERS, speaker=s) for i, s in enumerate(speakers)]
    out = allocate(budget, wanted, audio_tracks=1)
    used = sum(LAYERS[i].bitrate for i in out.values() if i is not None)
    assert used <= max(0.0, budget - AUDIO_BITRATE)


def descriptor(pid: int, wide: bool, tl0: int | None, tid: int = 0, y: bool = True) -> bytearray:
    x = 0x80 | (0x40 if tl0 is not None else 0) | 0x20
    out = bytearray([0x90, x])
    out += bytes([0x80 | pid >> 8, pid & 0xFF]) if wide else bytes([pid & 0x7F])
    if tl0 is not None:
        out.append(tl0)
    out.append(tid << 6 | (0x20 if y else 0))
    out += b"\x10\x02\x00"
    return out


def read(data: bytearray, wide: bool) -> tuple[int, int]:
    pid = ((data[2] & 0x7F) << 8 | data[3]) if wide else data[2] & 0x7F
    return pid, data[4 if wide else 3]


@given(
    st.booleans(),
    st.integers(0, 0x7FFF),
    st.integers(0, 0x7FFF),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(1, 40),
    st.integers(1, 40),
)
def test_picture_ids_continue_across_a_switch(
    wide: bool, pid_a: int, pid_b: int, tl0_a: int, tl0_b: int, n_a: int, n_b: int
) -> None:
    mask = 0x7FFF if wide else 0x7F
    rw = Vp8Rewriter()
    seen = []
    for i in range(n_a):
        d = descriptor((pid_a + i) & mask, wide, (tl0_a + i) & 0xFF)
        rw.rewrite(d, 0, len(d))
        seen.append(read(d, wide))
    rw.switch()
    for i in range(n_b):
        d = descriptor((pid_b + i) & mask, wide, (tl0_b + i) & 0xFF)
        rw.rewrite(d, 0, len(d))
        seen.append(read(d, wide))
    # The first run passes through; after it, one continuous count.
    assert seen[0] == (pid_a & mask, tl0_a)
    for (p0, t0), (p1, t1) in itertools.pairwise(seen):
        assert p1 == (p0 + 1) & mask
        assert t1 == (t0 + 1) & 0xFF


@given(
    st.booleans(),
    st.integers(0, 0x7FFF),
    st.integers(0, 0x7FFF),
    st.integers(0, 255),
    st.integers(1, 20),
    st.integers(0, 19),
)
def test_a_resent_picture_is_written_as_first_sent(
    wide: bool, pid_a: int, pid_b: int, tl0: int, n: int, again: int
) -> None:
    mask = 0x7FFF if wide else 0x7F
    rw = Vp8Rewriter()
    d = descriptor(pid_a, wide, 0)
    rw.rewrite(d, 0, len(d))
    rw.switch()
    sent: list[tuple[bytearray, bytearray]] = []
    for i in range(n):
        original = descriptor((pid_b + i) & mask, wide, (tl0 + i) & 0xFF)
        copy = bytearray(original)
        rw.rewrite(copy, 0, len(copy))
        sent.append((original, copy))
    original, copy = sent[again % n]
    picture = vp8_picture(original, 0, len(original))
    assert picture is not None
    for pending in (False, True):
        if pending:
            rw.switch()  # the previous run's offsets hold until the next run's first packet
        state = [getattr(rw, name) for name in Vp8Rewriter.__slots__]
        resent = bytearray(original)
        rw.resend(resent, picture)
        assert resent == copy
        assert [getattr(rw, name) for name in Vp8Rewriter.__slots__] == state


def test_temporal_id_and_sync_bit() -> None:
    d = descriptor(5, True, 3, tid=2, y=False)
    assert vp8_temporal_id(d, 0, len(d)) == (2, False)
    assert vp8_temporal_id(bytearray([0x10, 0x02]), 0, 2) is None


@given(st.binary(max_size=12), st.integers(0, 12), st.integers(0, 12))
def test_picture_reader_takes_any_bytes(data: bytes, start: int, end: int) -> None:
    picture = vp8_picture(data, start, min(end, len(data)))
    if picture is not None:
        pid_pos, pid, mask, tl0_pos, tl0 = picture
        assert mask in (0x7F, 0x7FFF)
        assert pid_pos < 0 or (start + 2 <= pid_pos < len(data) and 0 <= pid <= mask)
        assert tl0_pos < 0 or (start + 2 <= tl0_pos < len(data) and 0 <= tl0 <= 0xFF)
        buf = bytearray(data)
        Vp8Rewriter().apply(buf, picture)  # writes only inside the descriptor
        assert len(buf) == len(data)
