"""A call WebSocket's own deadlines with a fake ``now``
(:mod:`signalling.keepalive`): pings, the exact instant silence ends the
connection, and when TURN credentials are renewed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from signalling.keepalive import MISSED_PINGS, RENEW_AT, Keepalive, Wake, renew_after

TURN = [{"urls": ["turn:t"], "username": "u", "credential": "c", "ttl": 100}]


def test_pings_once_joined_and_a_silent_client_times_out_at_its_instant() -> None:
    k = Keepalive(2.0, now=0.0)
    assert k.get_timer() == 2.0
    # Not joined yet: the join timeout's business, no pings.
    assert k.handle_timer(2.0, joined=False) == []
    k.issued(2.5, "pt", [])
    assert k.handle_timer(4.0, joined=True) == [Wake.PING]
    k.heard(4.1)  # its pong
    assert k.silent_at == pytest.approx(4.1 + MISSED_PINGS * 2.0)
    assert k.handle_timer(6.0, joined=True) == [Wake.PING]
    assert k.handle_timer(8.0, joined=True) == [Wake.PING]
    # The deadline falls between two pings: the timer wakes exactly there.
    assert k.get_timer() == pytest.approx(10.0)
    assert k.handle_timer(10.0, joined=True) == [Wake.PING]
    assert k.get_timer() == pytest.approx(10.1)
    assert k.handle_timer(10.1, joined=True) == [Wake.TIMEOUT]


def test_a_stall_of_the_servers_own_loop_is_not_the_clients_silence() -> None:
    k = Keepalive(1.0, now=0.0)
    k.issued(0.0, "pt", [])
    k.heard(0.5)
    due = k.get_timer()  # pings at 1 and 2 were sent; the next wake is 3.0
    for _ in range(3):
        assert k.handle_timer(due, joined=True, due=due) in ([Wake.PING], [])
        due = k.get_timer()
    assert due == pytest.approx(3.5)
    # The loop stalled and the timer wakes 2 s late: what the client sent
    # meanwhile is unread. A ping now, and a ping's time to be heard.
    assert k.handle_timer(5.5, joined=True, due=3.5) == [Wake.PING]
    assert k.silent_at == pytest.approx(6.5)
    k.heard(5.6)  # its pong, read once the loop ran again
    assert k.silent_at == pytest.approx(5.6 + MISSED_PINGS * 1.0)
    # A timer on time, or late by less than a ping: silence is silence.
    due = k.get_timer()
    while (woke := k.handle_timer(due, joined=True, due=due)) != [Wake.TIMEOUT]:
        assert woke == [Wake.PING]
        due = k.get_timer()
    assert due == pytest.approx(8.6)
    k2 = Keepalive(1.0, now=0.0)
    k2.issued(0.0, "pt", [])
    assert k2.handle_timer(3.9, joined=True, due=3.0) == [Wake.TIMEOUT]


def test_turn_credentials_are_renewed_at_four_fifths_of_their_ttl_less_a_second() -> None:
    assert renew_after(TURN) == pytest.approx(RENEW_AT * 99)
    assert renew_after([{"urls": ["stun:s"]}]) is None
    k = Keepalive(200.0, now=0.0)
    k.issued(1.0, "pt", TURN)
    assert k.renew_at == pytest.approx(80.2)
    k.heard(80.0)
    assert k.handle_timer(80.2, joined=True) == [Wake.RENEW]
    # Nothing is due again until the fresh ones are issued.
    assert k.renew_at is None
    k.issued(80.2, "pt", TURN)
    assert k.renew_at == pytest.approx(159.4)


@given(
    interval=st.floats(0.1, 60.0),
    heard=st.lists(st.floats(0.0, 500.0), max_size=20),
    ttl=st.integers(1, 100_000) | st.none(),
)
def test_the_timer_never_skips_what_is_due(
    interval: float, heard: list[float], ttl: int | None
) -> None:
    k = Keepalive(interval, now=0.0)
    servers = [] if ttl is None else [{"urls": ["turn:t"], "ttl": ttl}]
    k.issued(0.0, "pt", servers)
    for t in sorted(heard):
        k.heard(t)
    now = k.get_timer()
    woke = k.handle_timer(now, joined=True)
    # Whatever woke it is due then, and the timeout ends everything else.
    assert woke
    assert Wake.TIMEOUT not in woke or woke == [Wake.TIMEOUT]
    if Wake.TIMEOUT in woke:
        assert now >= k.last_seen + MISSED_PINGS * interval
