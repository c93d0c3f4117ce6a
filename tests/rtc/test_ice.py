"""ICE-lite agent: checks built by aioice's STUN codec (a peer no one here wrote),
error codes of RFC 8445 section 7.3.1, consent freshness on a fake clock, and
hypothesis on the parser and the transition table."""

from __future__ import annotations

import os
from typing import Any

import pytest
from aioice import stun as astun
from hypothesis import given, settings
from hypothesis import strategies as st

from rtc import stun
from rtc.errors import IceStateError
from rtc.ice import (
    TRANSITIONS,
    CredentialsRetired,
    ForgottenAddress,
    IceLiteAgent,
    IceState,
    SelectedAddress,
    StateChanged,
    ValidatedAddress,
    local_ufrag_of,
    random_credentials,
)

LOCAL_UFRAG, LOCAL_PWD = "srvU", "serverpassword0123456789"
REMOTE_UFRAG, REMOTE_PWD = "brwU", "browserpassword012345678"
ADDR = ("198.51.100.7", 50000)
ADDR2 = ("198.51.100.8", 50001)


def agent(now: float = 0.0, **kwargs: Any) -> IceLiteAgent:
    return IceLiteAgent(LOCAL_UFRAG, LOCAL_PWD, REMOTE_UFRAG, REMOTE_PWD, now=now, **kwargs)


def request(
    *,
    username: str | None = f"{LOCAL_UFRAG}:{REMOTE_UFRAG}",
    pwd: str | None = LOCAL_PWD,
    use_candidate: bool = False,
    controlling: int | None = 0x1234567890ABCDEF,
    controlled: int | None = None,
    fingerprint: bool = True,
    method: astun.Method = astun.Method.BINDING,
    cls: astun.Class = astun.Class.REQUEST,
) -> tuple[bytes, bytes]:
    """A check as a browser sends it, built by aioice. Returns (bytes, transaction id)."""
    msg = astun.Message(message_method=method, message_class=cls)
    if username is not None:
        msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = 1853817087
    if controlling is not None:
        msg.attributes["ICE-CONTROLLING"] = controlling
    if controlled is not None:
        msg.attributes["ICE-CONTROLLED"] = controlled
    if use_candidate:
        msg.attributes["USE-CANDIDATE"] = None
    if pwd is not None:
        msg.add_message_integrity(pwd.encode())
    msg.add_fingerprint()
    data = bytes(msg)
    if not fingerprint:
        # aioice always appends FINGERPRINT; cut it off and shorten the header's length.
        assert stun.check_fingerprint(data) is True
        data = data[:2] + (len(data) - 28).to_bytes(2, "big") + data[4:-8]
    return data, msg.transaction_id


def events(a: IceLiteAgent) -> list[Any]:
    out = []
    while (e := a.next_event()) is not None:
        out.append(e)
    return out


def state(a: IceLiteAgent) -> IceState:
    # A function call, so mypy does not narrow a.state across the agent's calls.
    return a.state


def parse(resp: bytes | None) -> astun.Message:
    assert resp is not None
    # aioice verifies FINGERPRINT while parsing and raises if it is wrong.
    return astun.parse_message(resp)


# --- answering checks -----------------------------------------------------------


def test_success_response_verifies_with_aioice() -> None:
    a = agent()
    data, txid = request()
    resp = parse(a.receive_stun(data, ADDR, 0.0))
    assert resp.message_method == astun.Method.BINDING
    assert resp.message_class == astun.Class.RESPONSE
    assert resp.transaction_id == txid
    assert resp.check_message_integrity(LOCAL_PWD.encode())
    assert not resp.check_message_integrity(REMOTE_PWD.encode())
    assert resp.attributes["XOR-MAPPED-ADDRESS"] == ADDR
    assert "FINGERPRINT" in resp.attributes
    assert a.counters["checks"] == 1


def test_ipv6_mapped_address() -> None:
    a = agent()
    data, _ = request()
    resp = parse(a.receive_stun(data, ("2001:db8::5", 40000), 0.0))
    assert resp.attributes["XOR-MAPPED-ADDRESS"] == ("2001:db8::5", 40000)
    assert resp.check_message_integrity(LOCAL_PWD.encode())


def test_wrong_password_is_401_unsigned() -> None:
    a = agent()
    data, _ = request(pwd="not-the-password-at-all")
    resp = parse(a.receive_stun(data, ADDR, 0.0))
    assert resp.message_class == astun.Class.ERROR
    assert resp.attributes["ERROR-CODE"][0] == 401
    # RFC 8489 section 9.1.3: no MESSAGE-INTEGRITY on a 401.
    assert "MESSAGE-INTEGRITY" not in resp.attributes
    assert state(a) is IceState.NEW
    assert events(a) == []
    assert a.counters["error_401"] == 1


def test_unknown_local_ufrag_is_401() -> None:
    data, _ = request(username=f"other:{REMOTE_UFRAG}")
    assert parse(agent().receive_stun(data, ADDR, 0.0)).attributes["ERROR-CODE"][0] == 401


def test_wrong_remote_ufrag_is_401_once_known() -> None:
    data, _ = request(username=f"{LOCAL_UFRAG}:someoneelse")
    assert parse(agent().receive_stun(data, ADDR, 0.0)).attributes["ERROR-CODE"][0] == 401
    # Before the answer's credentials are known, the remote half is not checked.
    early = IceLiteAgent(LOCAL_UFRAG, LOCAL_PWD, now=0.0)
    assert parse(early.receive_stun(data, ADDR, 0.0)).message_class == astun.Class.RESPONSE
    early.set_remote_credentials(REMOTE_UFRAG, REMOTE_PWD)
    assert parse(early.receive_stun(data, ADDR, 0.0)).attributes["ERROR-CODE"][0] == 401


def test_missing_username_is_400() -> None:
    data, _ = request(username=None)
    resp = parse(agent().receive_stun(data, ADDR, 0.0))
    assert resp.attributes["ERROR-CODE"][0] == 400


def test_missing_integrity_is_400() -> None:
    data, _ = request(pwd=None)
    assert parse(agent().receive_stun(data, ADDR, 0.0)).attributes["ERROR-CODE"][0] == 400


def test_missing_fingerprint_is_400() -> None:
    data, _ = request(fingerprint=False)
    assert parse(agent().receive_stun(data, ADDR, 0.0)).attributes["ERROR-CODE"][0] == 400


def test_username_without_colon_is_400() -> None:
    data, _ = request(username=LOCAL_UFRAG)
    assert parse(agent().receive_stun(data, ADDR, 0.0)).attributes["ERROR-CODE"][0] == 400


def test_bad_fingerprint_is_dropped() -> None:
    data, _ = request()
    bad = data[:-1] + bytes([data[-1] ^ 1])
    a = agent()
    assert a.receive_stun(bad, ADDR, 0.0) is None
    assert a.counters["dropped_fingerprint"] == 1


def test_unknown_comprehension_required_attribute_is_420() -> None:
    msg = stun.StunMessage(stun.BINDING, stun.REQUEST, os.urandom(12))
    msg.set(stun.USERNAME, f"{LOCAL_UFRAG}:{REMOTE_UFRAG}").add(0x7777, b"what")
    data = bytes(msg.add_integrity(LOCAL_PWD.encode()).add_fingerprint())
    resp = stun.StunMessage.parse(agent().receive_stun(data, ADDR, 0.0) or b"")
    assert resp.decoded(stun.ERROR_CODE)[0] == 420
    assert resp.decoded(stun.UNKNOWN_ATTRIBUTES) == (0x7777,)
    assert stun.check_integrity(bytes(resp), LOCAL_PWD.encode())


def test_malformed_priority_is_400() -> None:
    msg = stun.StunMessage(stun.BINDING, stun.REQUEST, os.urandom(12))
    msg.set(stun.USERNAME, f"{LOCAL_UFRAG}:{REMOTE_UFRAG}").add(stun.PRIORITY, b"\x01\x02")
    data = bytes(msg.add_integrity(LOCAL_PWD.encode()).add_fingerprint())
    resp = stun.StunMessage.parse(agent().receive_stun(data, ADDR, 0.0) or b"")
    assert resp.decoded(stun.ERROR_CODE)[0] == 400


# RFC 5769 section 2.1: an ICE check from "h6vY" to "evtj" that claims ICE-CONTROLLED.
RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"
    "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)


def test_rfc5769_sample_request() -> None:
    a = IceLiteAgent("evtj", "VOkJxbRl1RmTxUk/WvJxBt", "h6vY", "unused", now=0.0)
    resp = parse(a.receive_stun(RFC5769_REQUEST, ADDR, 0.0))
    # Integrity and fingerprint check out; the role attribute is a conflict for us.
    assert resp.transaction_id == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert resp.attributes["ERROR-CODE"][0] == 487
    assert resp.check_message_integrity(b"VOkJxbRl1RmTxUk/WvJxBt")
    wrong = IceLiteAgent("evtj", "another-password-entirely", now=0.0)
    assert parse(wrong.receive_stun(RFC5769_REQUEST, ADDR, 0.0)).attributes["ERROR-CODE"][0] == 401
    assert local_ufrag_of(RFC5769_REQUEST) == "evtj"


@given(tiebreaker=st.integers(min_value=0, max_value=2**64 - 1))
def test_role_conflict_is_487_whatever_the_tiebreaker(tiebreaker: int) -> None:
    """RFC 8445 7.3.1.1: the peer claims controlled too. A lite agent cannot switch to
    controlling, so it answers 487 (signed) and keeps its role; the peer switches."""
    a = agent()
    data, _ = request(controlling=None, controlled=tiebreaker, use_candidate=True)
    resp = parse(a.receive_stun(data, ADDR, 0.0))
    assert resp.attributes["ERROR-CODE"][0] == 487
    assert resp.check_message_integrity(LOCAL_PWD.encode())
    assert state(a) is IceState.NEW
    assert a.selected is None


def test_request_without_role_attribute_is_answered() -> None:
    data, _ = request(controlling=None)
    assert parse(agent().receive_stun(data, ADDR, 0.0)).message_class == astun.Class.RESPONSE


def test_indications_and_responses_are_dropped() -> None:
    a = agent()
    keepalive, _ = request(cls=astun.Class.INDICATION)
    response, _ = request(cls=astun.Class.RESPONSE)
    assert a.receive_stun(keepalive, ADDR, 0.0) is None
    assert a.receive_stun(response, ADDR, 0.0) is None
    assert a.receive_stun(b"\x16\xfe\xfd" + bytes(30), ADDR, 0.0) is None
    assert a.counters["dropped_not_request"] == 2
    assert a.counters["dropped_malformed"] == 1


# --- nomination and the state machine ----------------------------------------------


def test_check_then_nomination() -> None:
    a = agent()
    a.receive_stun(request()[0], ADDR, 0.0)
    assert events(a) == [
        ValidatedAddress(ADDR),
        StateChanged(IceState.NEW, IceState.CHECKING, "first valid check"),
    ]
    a.receive_stun(request(use_candidate=True)[0], ADDR, 0.5)
    assert events(a) == [
        StateChanged(IceState.CHECKING, IceState.CONNECTED, "USE-CANDIDATE"),
        SelectedAddress(ADDR),
    ]
    assert a.selected == ADDR
    # The browser moves to another pair (network change): it nominates again.
    a.receive_stun(request(use_candidate=True)[0], ADDR2, 1.0)
    assert events(a) == [ValidatedAddress(ADDR2), SelectedAddress(ADDR2)]
    assert a.selected == ADDR2


def test_nomination_in_the_first_check() -> None:
    a = agent()
    a.receive_stun(request(use_candidate=True)[0], ADDR, 0.0)
    assert state(a) is IceState.CONNECTED
    assert SelectedAddress(ADDR) in events(a)


def test_consent_freshness_on_a_fake_clock() -> None:
    a = agent(disconnect_timeout=10.0, consent_timeout=30.0)
    a.receive_stun(request(use_candidate=True)[0], ADDR, 0.0)
    events(a)
    # A browser's consent checks every 5 s keep the pair; the timer moves with them.
    for t in (5.0, 10.0, 15.0):
        a.receive_stun(request()[0], ADDR, t)
        assert a.get_timer() == t + 10.0
    a.handle_timer(24.9)
    assert state(a) is IceState.CONNECTED
    # Checks on another pair do not refresh the selected pair's consent.
    a.receive_stun(request()[0], ADDR2, 20.0)
    a.handle_timer(25.0)
    assert state(a) is IceState.DISCONNECTED
    assert a.get_timer() == 45.0
    # The peer comes back before consent expires.
    a.receive_stun(request()[0], ADDR, 30.0)
    assert state(a) is IceState.CONNECTED
    a.handle_timer(40.0)
    assert state(a) is IceState.DISCONNECTED
    a.handle_timer(59.9)
    assert state(a) is IceState.DISCONNECTED
    a.handle_timer(60.0)
    assert state(a) is IceState.FAILED
    assert events(a)[-1] == StateChanged(IceState.DISCONNECTED, IceState.FAILED, "consent expired")
    assert a.get_timer() is None
    # Consent expired: no more answers (RFC 7675 section 5.1); an ICE restart is needed.
    assert a.receive_stun(request(use_candidate=True)[0], ADDR, 61.0) is None
    a.close()
    assert state(a) is IceState.CLOSED


def test_connect_timeout_without_nomination() -> None:
    a = agent(now=100.0, connect_timeout=30.0)
    a.receive_stun(request()[0], ADDR, 101.0)
    assert a.get_timer() == 130.0
    a.handle_timer(129.0)
    assert state(a) is IceState.CHECKING
    a.handle_timer(130.0)
    assert state(a) is IceState.FAILED


def test_close_stops_answers() -> None:
    a = agent()
    a.close()
    assert state(a) is IceState.CLOSED
    assert a.receive_stun(request()[0], ADDR, 0.0) is None
    assert a.get_timer() is None
    a.close()


# --- demultiplexing and credentials -------------------------------------------------


def test_local_ufrag_of() -> None:
    assert local_ufrag_of(request()[0]) == LOCAL_UFRAG
    assert local_ufrag_of(request(pwd="wrong")[0]) == LOCAL_UFRAG  # framing only
    assert local_ufrag_of(request(username=None)[0]) is None
    assert local_ufrag_of(request(username="nocolon")[0]) is None
    assert local_ufrag_of(request(cls=astun.Class.RESPONSE)[0]) is None
    assert local_ufrag_of(b"\x80\x60" + bytes(40)) is None
    assert local_ufrag_of(b"") is None


def test_random_credentials() -> None:
    ufrag, pwd = random_credentials()
    assert len(ufrag) >= 4 and len(pwd) >= 22
    assert random_credentials() != (ufrag, pwd)
    a = IceLiteAgent(ufrag, pwd, now=0.0)
    data, _ = request(username=f"{ufrag}:x", pwd=pwd)
    assert parse(a.receive_stun(data, ADDR, 0.0)).check_message_integrity(pwd.encode())


# --- hypothesis -------------------------------------------------------------------


@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    a = agent()
    resp = a.receive_stun(data, ADDR, 0.0)
    assert resp is None or stun.is_stun(resp)
    local_ufrag_of(data)


@given(
    attrs=st.lists(
        st.tuples(
            st.sampled_from([*stun.KNOWN_TYPES, 0x7F00, 0xC001]),
            st.binary(max_size=24),
        ),
        max_size=6,
    ),
    sign=st.booleans(),
    cls=st.sampled_from([stun.REQUEST, stun.INDICATION, stun.SUCCESS, stun.ERROR]),
)
def test_random_well_framed_messages_never_crash(
    attrs: list[tuple[int, bytes]], sign: bool, cls: int
) -> None:
    """Signed with the right key, random attributes reach every check past integrity."""
    msg = stun.StunMessage(stun.BINDING, cls, os.urandom(12))
    msg.set(stun.USERNAME, f"{LOCAL_UFRAG}:{REMOTE_UFRAG}")
    for atype, value in attrs:
        if atype not in (stun.MESSAGE_INTEGRITY, stun.FINGERPRINT):
            msg.add(atype, value)
    if sign:
        msg.add_integrity(LOCAL_PWD.encode())
    data = bytes(msg.add_fingerprint())
    a = agent()
    resp = a.receive_stun(data, ADDR, 0.0)
    if resp is not None:
        parsed = stun.StunMessage.parse(resp)
        assert parsed.transaction_id == msg.transaction_id
        assert stun.check_fingerprint(resp) is True


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("check"), st.sampled_from([ADDR, ADDR2]), st.booleans()),
        st.tuples(st.just("wait"), st.floats(min_value=0.0, max_value=20.0), st.just(False)),
        st.tuples(st.just("close"), st.just(None), st.just(False)),
    ),
    max_size=25,
)


@settings(max_examples=60)
@given(ops=_OPS)
def test_transitions_follow_the_table(ops: list[tuple[str, Any, bool]]) -> None:
    a = agent()
    now = 0.0
    allowed = {(old, new) for (old, _), new in TRANSITIONS.items()}
    for op, arg, flag in ops:
        if op == "check":
            a.receive_stun(request(use_candidate=flag)[0], arg, now)
        elif op == "wait":
            now += arg
            timer = a.get_timer()
            if timer is not None and timer <= now:
                a.handle_timer(now)
        else:
            a.close()
        state = a.state
        for e in events(a):
            if isinstance(e, StateChanged):
                assert (e.old, e.new) in allowed
                assert e.old is not e.new
        if state in (IceState.CONNECTED, IceState.DISCONNECTED):
            assert a.selected is not None
            assert a.get_timer() is not None
        if state in (IceState.FAILED, IceState.CLOSED):
            assert a.get_timer() is None


# -- ICE restarts and NAT rebinding ---------------------------------------------------

NEW_UFRAG, NEW_PWD = "srvV", "newserverpassword0123456"
NEW_REMOTE_UFRAG, NEW_REMOTE_PWD = "brwV", "newbrowserpassword012345"
ADDR3 = ("203.0.113.9", 40000)


def new_request(**kwargs: Any) -> bytes:
    return request(username=f"{NEW_UFRAG}:{NEW_REMOTE_UFRAG}", pwd=NEW_PWD, **kwargs)[0]


def connected(now: float = 0.0) -> IceLiteAgent:
    a = agent(now)
    a.receive_stun(request(use_candidate=True)[0], ADDR, now)
    events(a)
    return a


def test_restart_answers_both_generations_until_the_new_one_nominates() -> None:
    a = connected()
    a.restart(NEW_UFRAG, NEW_PWD, 1.0)
    assert a.restarting and a.previous_ufrag == LOCAL_UFRAG
    assert a.remote_ufrag is None  # the peer's come with its SDP
    a.set_remote_credentials(NEW_REMOTE_UFRAG, NEW_REMOTE_PWD)
    # The old path's consent checks are still answered, signed with the old password.
    old = a.receive_stun(request()[0], ADDR, 2.0)
    assert old is not None and stun.check_integrity(old, LOCAL_PWD.encode())
    # The new generation checks a new path; until it nominates, the old one stays.
    fresh = a.receive_stun(new_request(), ADDR2, 2.5)
    assert fresh is not None and stun.check_integrity(fresh, NEW_PWD.encode())
    assert events(a) == [ValidatedAddress(ADDR2)]
    assert a.selected == ADDR and a.restarting
    # A nomination under the new credentials moves the path and ends the old generation.
    a.receive_stun(new_request(use_candidate=True), ADDR2, 3.0)
    assert events(a) == [
        SelectedAddress(ADDR2),
        ForgottenAddress(ADDR),
        CredentialsRetired(LOCAL_UFRAG),
    ]
    assert a.selected == ADDR2 and not a.restarting
    assert list(a.validated) == [ADDR2]
    assert state(a) is IceState.CONNECTED
    # The old credentials are refused from now on (401, unsigned).
    refused = a.receive_stun(request()[0], ADDR, 4.0)
    assert refused is not None
    assert stun.StunMessage.parse(refused).decoded(stun.ERROR_CODE)[0] == 401
    assert a.counters["restarts"] == a.counters["restarts_completed"] == 1


def test_restart_from_a_dead_path_reconnects() -> None:
    a = connected()
    a.handle_timer(10.0)  # the old path went silent: DISCONNECTED, not yet FAILED
    assert state(a) is IceState.DISCONNECTED
    a.restart(NEW_UFRAG, NEW_PWD, 11.0)
    a.set_remote_credentials(NEW_REMOTE_UFRAG, NEW_REMOTE_PWD)
    a.receive_stun(new_request(use_candidate=True), ADDR2, 12.0)
    assert state(a) is IceState.CONNECTED and a.selected == ADDR2
    # The same address may carry both generations: it stays validated.
    b = connected()
    b.restart(NEW_UFRAG, NEW_PWD, 1.0)
    b.receive_stun(new_request(use_candidate=True), ADDR, 2.0)
    assert ForgottenAddress(ADDR) not in events(b)
    assert list(b.validated) == [ADDR]


def test_old_generation_nomination_does_not_end_a_restart() -> None:
    a = connected()
    a.restart(NEW_UFRAG, NEW_PWD, 1.0)
    a.receive_stun(request(use_candidate=True)[0], ADDR, 2.0)
    assert a.restarting and a.selected == ADDR
    assert not [e for e in events(a) if isinstance(e, CredentialsRetired)]


def test_restart_is_refused_when_terminal_or_with_the_same_ufrag() -> None:
    a = connected()
    with pytest.raises(IceStateError):
        a.restart(LOCAL_UFRAG, NEW_PWD, 1.0)
    a.close()
    with pytest.raises(IceStateError):
        a.restart(NEW_UFRAG, NEW_PWD, 1.0)


def test_media_from_a_new_address_moves_the_path() -> None:
    a = connected()
    assert a.rebind(ADDR3, 1.0)
    assert events(a) == [ValidatedAddress(ADDR3), SelectedAddress(ADDR3)]
    assert a.selected == ADDR3
    assert not a.rebind(ADDR3, 1.5)  # already there
    # Not before the peer ever connected: there is no path to move.
    assert not agent().rebind(ADDR3, 1.0)


def test_a_check_from_a_new_address_moves_only_a_quiet_path() -> None:
    a = connected()
    # A backup pair's check while the selected path is alive: validated, not selected.
    a.receive_stun(request()[0], ADDR2, 2.0)
    assert events(a) == [ValidatedAddress(ADDR2)]
    assert a.selected == ADDR
    # The NAT gave the peer a new port and its old one is silent: the check moves the path.
    a.receive_stun(request()[0], ADDR3, 7.0)
    assert events(a) == [ValidatedAddress(ADDR3), SelectedAddress(ADDR3)]
    assert a.selected == ADDR3 and a.counters["rebinds_check"] == 1
    # A check with a bad password from yet another address moves nothing.
    a.receive_stun(request(pwd="wrongpassword0123456789x")[0], ADDR2, 20.0)
    assert a.selected == ADDR3 and events(a) == []
