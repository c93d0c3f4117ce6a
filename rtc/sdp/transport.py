"""ICE and DTLS in a session description: the attributes legal at session
and media level alike (``ice-ufrag``, ``ice-pwd``, ``ice-options``, RFC 8839
section 5; ``fingerprint``, RFC 8122 section 5; ``setup``, RFC 4145 section 4
and RFC 5763 section 5), ICE candidates (RFC 8839 section 5.1), and the
parameters of a BUNDLE transport they add up to.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from rtc.errors import SdpParseError
from rtc.sdp.grammar import parse_token, parse_uint, require_value, split_fields, split_words

__all__ = [
    "CandidateLine",
    "Fingerprint",
    "Setup",
    "TransportFields",
    "TransportParameters",
    "parse_candidate",
    "transport_attribute",
    "transport_lines",
]


class Setup(StrEnum):
    """DTLS connection roles (RFC 4145 section 4, RFC 5763 section 5)."""

    ACTIVE = "active"
    PASSIVE = "passive"
    ACTPASS = "actpass"
    HOLDCONN = "holdconn"


@dataclass
class Fingerprint:
    """``a=fingerprint`` (RFC 8122 section 5): hash function and hex pairs."""

    algorithm: str
    value: str


@dataclass
class CandidateLine:
    """``a=candidate`` (RFC 8839 section 5.1); extension pairs kept in order."""

    foundation: str
    component: int
    transport: str
    priority: int
    address: str
    port: int
    type: str
    extensions: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        text = (
            f"{self.foundation} {self.component} {self.transport} {self.priority} "
            f"{self.address} {self.port} typ {self.type}"
        )
        for name, value in self.extensions:
            text += f" {name} {value}"
        return text


@dataclass
class TransportParameters:
    """The ICE and DTLS parameters of a BUNDLE transport, media level first,
    then session level (RFC 8839 section 5.4, RFC 8122 section 5, RFC 4145)."""

    ice_ufrag: str | None
    ice_pwd: str | None
    ice_options: list[str]
    ice_lite: bool
    fingerprints: list[Fingerprint]
    setup: Setup | None
    candidates: list[CandidateLine]
    end_of_candidates: bool


class TransportFields(Protocol):
    """The ICE and DTLS fields a session and each of its media sections both carry."""

    ice_ufrag: str | None
    ice_pwd: str | None
    ice_options: list[str]
    fingerprints: list[Fingerprint]
    setup: Setup | None


_HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})*")
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")
_SETUPS = {s.value: s for s in Setup}


def _fingerprint(value: str) -> Fingerprint:
    algorithm, digest = split_fields(value, "a=fingerprint", 2)
    parse_token(algorithm, "a=fingerprint hash function")
    if not _HEX_PAIRS.fullmatch(digest):
        raise SdpParseError(f"a=fingerprint: not hex pairs: {digest!r}")
    return Fingerprint(algorithm, digest)


def _setup(value: str | None) -> Setup:
    setup = _SETUPS.get(require_value(value, "a=setup"))
    if setup is None:
        raise SdpParseError(f"a=setup: unknown role {value!r}")
    return setup


def _ice_options(value: str | None) -> list[str]:
    return [
        parse_token(o, "a=ice-options") for o in split_words(require_value(value, "a=ice-options"))
    ]


def parse_candidate(value: str) -> CandidateLine:
    """An ``a=candidate`` value (RFC 8839 section 5.1)."""
    parts = split_words(value)
    if len(parts) < 8 or parts[6] != "typ" or len(parts) % 2:
        raise SdpParseError(f"a=candidate: malformed: {value!r}")
    foundation = parts[0]
    if len(foundation) > 32 or not _ICE_CHARS.fullmatch(foundation):
        raise SdpParseError(f"a=candidate: bad foundation {foundation!r}")
    extensions = [(parts[i], parts[i + 1]) for i in range(8, len(parts), 2)]
    return CandidateLine(
        foundation=foundation,
        component=parse_uint(parts[1], "a=candidate component", 1, 256),
        transport=parse_token(parts[2], "a=candidate transport"),
        priority=parse_uint(parts[3], "a=candidate priority", 1, 2**31 - 1),
        address=parts[4],
        port=parse_uint(parts[5], "a=candidate port", 0, 65535),
        type=parse_token(parts[7], "a=candidate type"),
        extensions=extensions,
    )


def transport_attribute(where: TransportFields, name: str, value: str | None) -> bool:
    """ICE and DTLS attributes, legal at both levels; False if not one of them."""
    if name == "ice-ufrag":
        if where.ice_ufrag is not None:
            raise SdpParseError("second a=ice-ufrag")
        where.ice_ufrag = require_value(value, name)
    elif name == "ice-pwd":
        if where.ice_pwd is not None:
            raise SdpParseError("second a=ice-pwd")
        where.ice_pwd = require_value(value, name)
    elif name == "ice-options":
        where.ice_options.extend(_ice_options(value))
    elif name == "fingerprint":
        where.fingerprints.append(_fingerprint(require_value(value, name)))
    elif name == "setup":
        if where.setup is not None:
            raise SdpParseError("second a=setup")
        where.setup = _setup(value)
    else:
        return False
    return True


def transport_lines(where: TransportFields) -> Iterator[str]:
    """The ICE and DTLS ``a=`` lines of a session or a media section."""
    if where.ice_ufrag is not None:
        yield f"a=ice-ufrag:{where.ice_ufrag}"
    if where.ice_pwd is not None:
        yield f"a=ice-pwd:{where.ice_pwd}"
    if where.ice_options:
        yield "a=ice-options:" + " ".join(where.ice_options)
    for fingerprint in where.fingerprints:
        yield f"a=fingerprint:{fingerprint.algorithm} {fingerprint.value}"
    if where.setup is not None:
        yield f"a=setup:{where.setup}"
