"""STUN (RFC 8489) and the ICE-lite agent's connectivity checks (RFC 8445 section 7.3).

Every datagram goes through :meth:`Message.parse`, every attribute the table
knows through its decoder, and the agent answers it as it would on the
media socket. Each input is also re-signed with the agent's credentials so
that the fuzzer reaches the code behind MESSAGE-INTEGRITY, not only the
401 in front of it.
"""

from __future__ import annotations

import contextlib

from fuzz import Finding
from rtc import ice, stun
from rtc.errors import StunParseError

LOCAL_UFRAG, LOCAL_PWD = "fzLo", "fuzz-local-password-0123"
REMOTE_UFRAG, REMOTE_PWD = "fzRe", "fuzz-remote-password-012"
ADDR = ("192.0.2.10", 50000)
NOW = 1000.0

_SIGNATURES = (stun.MESSAGE_INTEGRITY, stun.MESSAGE_INTEGRITY_SHA256, stun.FINGERPRINT)


def resign(
    msg: stun.StunMessage, username: str, key: bytes, *, extra: tuple[tuple[int, bytes], ...] = ()
) -> bytes:
    """``msg`` with its USERNAME, integrity and FINGERPRINT replaced by valid ones."""
    out = stun.StunMessage(msg.method, msg.cls, msg.transaction_id)
    out.add(stun.USERNAME, username.encode())
    for atype, value in extra:
        out.add(atype, value)
    drop = {stun.USERNAME, *_SIGNATURES, *(atype for atype, _ in extra)}
    out.attributes.extend(a for a in msg.attributes if a.type not in drop)
    return bytes(out.add_integrity(key).add_fingerprint())


def _decode_all(msg: stun.StunMessage) -> None:
    for attribute in msg.attributes:
        if attribute.type in stun.ATTRIBUTES_BY_TYPE:
            with contextlib.suppress(StunParseError):
                msg.decoded(attribute.type)


def check(data: bytes) -> None:
    stun.is_stun(data)
    ice.local_ufrag_of(data)
    stun.check_fingerprint(data)
    stun.check_integrity(data, b"key")
    stun.check_integrity(data, b"key", sha256=True)
    agent = ice.IceLiteAgent(LOCAL_UFRAG, LOCAL_PWD, REMOTE_UFRAG, REMOTE_PWD, now=NOW)
    _answer(agent, data)
    try:
        msg = stun.StunMessage.parse(data)
    except StunParseError:
        return
    if bytes(msg) != data:
        raise Finding("a STUN message does not serialise back to the bytes it parsed")
    _decode_all(msg)
    signed = resign(msg, f"{LOCAL_UFRAG}:{REMOTE_UFRAG}", LOCAL_PWD.encode())
    if stun.check_integrity(signed, LOCAL_PWD.encode()) is not True:
        raise Finding("MESSAGE-INTEGRITY we added does not check")
    if stun.check_fingerprint(signed) is not True:
        raise Finding("FINGERPRINT we added does not check")
    _answer(agent, signed)


def _answer(agent: ice.IceLiteAgent, data: bytes) -> None:
    response = agent.receive_stun(data, ADDR, NOW)
    if response is None:
        return
    reply = stun.StunMessage.parse(response)
    if reply.transaction_id != data[8:20]:
        raise Finding("the agent answered with another transaction id")
