"""STUN message codec (RFC 8489 section 5 and 14, TURN attributes of RFC 8656 section 18).

Why not ``aioice.stun``: it XORs addresses byte by byte and rebuilds the whole
attribute dictionary per message, which costs about 100 us per server
transaction; it also lacks MESSAGE-INTEGRITY-SHA256 and keeps no raw attribute
bytes, so integrity cannot be checked over exactly what the peer sent.

A :class:`StunMessage` keeps every attribute as its raw value plus the padding bytes
that followed it, so ``bytes(Message.parse(data)) == data`` for every
well-formed message (RFC 5769 vectors pad with spaces, for example). Typed
values come from the attribute table :data:`ATTRIBUTES` of (type, name, pack,
unpack), the shape aioice uses.

Nothing in here touches a socket or the clock.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rtc.errors import StunParseError

COOKIE = 0x2112A442
COOKIE_BYTES = COOKIE.to_bytes(4, "big")
FINGERPRINT_XOR = 0x5354554E
HEADER = struct.Struct("!HHI12s")
HEADER_LENGTH = 20
TLV = struct.Struct("!HH")
U16 = struct.Struct("!H")
U32 = struct.Struct("!I")

# Classes (RFC 8489 section 5): the two class bits sit at bit 4 and bit 8.
REQUEST = 0x000
INDICATION = 0x010
SUCCESS = 0x100
ERROR = 0x110

# Methods (RFC 8489 section 18.2, RFC 8656 section 17).
BINDING = 0x001
ALLOCATE = 0x003
REFRESH = 0x004
SEND = 0x006
DATA = 0x007
CREATE_PERMISSION = 0x008
CHANNEL_BIND = 0x009

METHOD_NAMES = {
    BINDING: "Binding",
    ALLOCATE: "Allocate",
    REFRESH: "Refresh",
    SEND: "Send",
    DATA: "Data",
    CREATE_PERMISSION: "CreatePermission",
    CHANNEL_BIND: "ChannelBind",
}

# Attribute types (RFC 8489 section 18.3, RFC 8656 section 18, RFC 5780 section 7).
MAPPED_ADDRESS = 0x0001
CHANGE_REQUEST = 0x0003
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
CHANNEL_NUMBER = 0x000C
LIFETIME = 0x000D
XOR_PEER_ADDRESS = 0x0012
DATA_ATTR = 0x0013
REALM = 0x0014
NONCE = 0x0015
XOR_RELAYED_ADDRESS = 0x0016
REQUESTED_ADDRESS_FAMILY = 0x0017
EVEN_PORT = 0x0018
REQUESTED_TRANSPORT = 0x0019
DONT_FRAGMENT = 0x001A
MESSAGE_INTEGRITY_SHA256 = 0x001C
PASSWORD_ALGORITHM = 0x001D
USERHASH = 0x001E
XOR_MAPPED_ADDRESS = 0x0020
RESERVATION_TOKEN = 0x0022
PRIORITY = 0x0024
USE_CANDIDATE = 0x0025
PADDING = 0x0026
RESPONSE_PORT = 0x0027
ADDITIONAL_ADDRESS_FAMILY = 0x8000
ADDRESS_ERROR_CODE = 0x8001
PASSWORD_ALGORITHMS = 0x8002
ALTERNATE_DOMAIN = 0x8003
ICMP = 0x8004
SOFTWARE = 0x8022
ALTERNATE_SERVER = 0x8023
CACHE_TIMEOUT = 0x8027
FINGERPRINT = 0x8028
ICE_CONTROLLED = 0x8029
ICE_CONTROLLING = 0x802A
RESPONSE_ORIGIN = 0x802B
OTHER_ADDRESS = 0x802C

FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02

TRANSPORT_UDP = 17

_XOR16 = COOKIE >> 16


class StunAttribute(NamedTuple):
    """One TLV as received: its value and the padding bytes that followed it."""

    type: int
    value: bytes
    padding: bytes = b""


def padding_length(length: int) -> int:
    """Bytes needed to pad ``length`` to a multiple of four (RFC 8489 section 14)."""
    return -length & 3


def message_type(method: int, cls: int) -> int:
    """Interleave method and class bits (RFC 8489 section 5, figure 3)."""
    return (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | cls


def split_type(msg_type: int) -> tuple[int, int]:
    """Inverse of :func:`message_type`: returns (method, class)."""
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    return method, msg_type & 0x0110


# --- attribute value codecs (RFC 8489 section 14) -----------------------------

Address = tuple[str, int]


def pack_address(value: Address) -> bytes:
    ip = ipaddress.ip_address(value[0])
    family = FAMILY_IPV4 if ip.version == 4 else FAMILY_IPV6
    return bytes((0, family)) + U16.pack(value[1]) + ip.packed


def unpack_address(data: bytes) -> Address:
    if len(data) < 4:
        raise StunParseError("address attribute too short")
    family = data[1]
    port = U16.unpack_from(data, 2)[0]
    if family == FAMILY_IPV4 and len(data) == 8:
        return str(ipaddress.IPv4Address(data[4:8])), port
    if family == FAMILY_IPV6 and len(data) == 20:
        return str(ipaddress.IPv6Address(data[4:20])), port
    raise StunParseError("address attribute has a bad family or length")


def xor_address(value: Address, transaction_id: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS encoding (RFC 8489 section 14.2), whole-word XOR."""
    ip = ipaddress.ip_address(value[0])
    port = value[1] ^ _XOR16
    if ip.version == 4:
        return struct.pack("!BBHI", 0, FAMILY_IPV4, port, int(ip) ^ COOKIE)
    mask = int.from_bytes(COOKIE_BYTES + transaction_id, "big")
    return struct.pack("!BBH", 0, FAMILY_IPV6, port) + (int(ip) ^ mask).to_bytes(16, "big")


def unxor_address(data: bytes, transaction_id: bytes) -> Address:
    if len(data) < 4:
        raise StunParseError("XOR address attribute too short")
    family = data[1]
    port = U16.unpack_from(data, 2)[0] ^ _XOR16
    if family == FAMILY_IPV4 and len(data) == 8:
        return str(ipaddress.IPv4Address(U32.unpack_from(data, 4)[0] ^ COOKIE)), port
    if family == FAMILY_IPV6 and len(data) == 20:
        mask = int.from_bytes(COOKIE_BYTES + transaction_id, "big")
        return str(ipaddress.IPv6Address(int.from_bytes(data[4:20], "big") ^ mask)), port
    raise StunParseError("XOR address attribute has a bad family or length")


def pack_u32(value: int) -> bytes:
    return U32.pack(value)


def unpack_u32(data: bytes) -> int:
    if len(data) != 4:
        raise StunParseError("32-bit attribute has the wrong length")
    return int(U32.unpack(data)[0])


def pack_u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def unpack_u64(data: bytes) -> int:
    if len(data) != 8:
        raise StunParseError("64-bit attribute has the wrong length")
    return int.from_bytes(data, "big")


def pack_channel(value: int) -> bytes:
    # RFC 8656 section 18.1: channel number then 16 bits of RFFU.
    return U16.pack(value) + b"\x00\x00"


def unpack_channel(data: bytes) -> int:
    if len(data) != 4:
        raise StunParseError("CHANNEL-NUMBER has the wrong length")
    return int(U16.unpack_from(data)[0])


def pack_string(value: str) -> bytes:
    return value.encode("utf-8")


def unpack_string(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StunParseError("text attribute is not UTF-8") from exc


def pack_bytes(value: bytes) -> bytes:
    return value


def unpack_bytes(data: bytes) -> bytes:
    return data


def pack_error(value: tuple[int, str]) -> bytes:
    code, reason = value
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode("utf-8")


def unpack_error(data: bytes) -> tuple[int, str]:
    if len(data) < 4:
        raise StunParseError("ERROR-CODE too short")
    code = (data[2] & 0x07) * 100 + data[3]
    return code, unpack_string(data[4:])


def pack_unknown(value: Iterable[int]) -> bytes:
    return b"".join(U16.pack(t) for t in value)


def unpack_unknown(data: bytes) -> tuple[int, ...]:
    if len(data) % 2:
        raise StunParseError("UNKNOWN-ATTRIBUTES has an odd length")
    return tuple(U16.unpack_from(data, i)[0] for i in range(0, len(data), 2))


def pack_u8_rffu(value: int) -> bytes:
    """An 8-bit value then 24 bits of RFFU: the address family attributes
    (RFC 8656 section 18.8) and REQUESTED-TRANSPORT (section 18.11) share
    this layout."""
    return bytes((value, 0, 0, 0))


def unpack_u8_rffu(data: bytes) -> int:
    if len(data) != 4:
        raise StunParseError("a one-byte attribute (family or transport) has the wrong length")
    return data[0]


def pack_even_port(value: bool) -> bytes:
    return b"\x80" if value else b"\x00"


def unpack_even_port(data: bytes) -> bool:
    if len(data) != 1:
        raise StunParseError("EVEN-PORT has the wrong length")
    return bool(data[0] & 0x80)


def pack_empty(value: None) -> bytes:
    return b""


def unpack_empty(data: bytes) -> None:
    if data:
        raise StunParseError("flag attribute must be empty")


def pack_token(value: bytes) -> bytes:
    return value


def unpack_token(data: bytes) -> bytes:
    if len(data) != 8:
        raise StunParseError("RESERVATION-TOKEN must be 8 bytes")
    return data


XorAware = bool

# (type, name, pack, unpack, xor): the single table of attributes we understand.
# Types below 0x8000 are comprehension-required (RFC 8489 section 14): a request
# with one missing from this table gets 420 with UNKNOWN-ATTRIBUTES.
ATTRIBUTES: list[tuple[int, str, Callable[..., bytes], Callable[..., Any], XorAware]] = [
    (MAPPED_ADDRESS, "MAPPED-ADDRESS", pack_address, unpack_address, False),
    (CHANGE_REQUEST, "CHANGE-REQUEST", pack_u32, unpack_u32, False),
    (USERNAME, "USERNAME", pack_string, unpack_string, False),
    (MESSAGE_INTEGRITY, "MESSAGE-INTEGRITY", pack_bytes, unpack_bytes, False),
    (ERROR_CODE, "ERROR-CODE", pack_error, unpack_error, False),
    (UNKNOWN_ATTRIBUTES, "UNKNOWN-ATTRIBUTES", pack_unknown, unpack_unknown, False),
    (CHANNEL_NUMBER, "CHANNEL-NUMBER", pack_channel, unpack_channel, False),
    (LIFETIME, "LIFETIME", pack_u32, unpack_u32, False),
    (XOR_PEER_ADDRESS, "XOR-PEER-ADDRESS", xor_address, unxor_address, True),
    (DATA_ATTR, "DATA", pack_bytes, unpack_bytes, False),
    (REALM, "REALM", pack_string, unpack_string, False),
    (NONCE, "NONCE", pack_bytes, unpack_bytes, False),
    (XOR_RELAYED_ADDRESS, "XOR-RELAYED-ADDRESS", xor_address, unxor_address, True),
    (REQUESTED_ADDRESS_FAMILY, "REQUESTED-ADDRESS-FAMILY", pack_u8_rffu, unpack_u8_rffu, False),
    (EVEN_PORT, "EVEN-PORT", pack_even_port, unpack_even_port, False),
    (REQUESTED_TRANSPORT, "REQUESTED-TRANSPORT", pack_u8_rffu, unpack_u8_rffu, False),
    (DONT_FRAGMENT, "DONT-FRAGMENT", pack_empty, unpack_empty, False),
    (MESSAGE_INTEGRITY_SHA256, "MESSAGE-INTEGRITY-SHA256", pack_bytes, unpack_bytes, False),
    (PASSWORD_ALGORITHM, "PASSWORD-ALGORITHM", pack_bytes, unpack_bytes, False),
    (USERHASH, "USERHASH", pack_bytes, unpack_bytes, False),
    (XOR_MAPPED_ADDRESS, "XOR-MAPPED-ADDRESS", xor_address, unxor_address, True),
    (RESERVATION_TOKEN, "RESERVATION-TOKEN", pack_token, unpack_token, False),
    (PRIORITY, "PRIORITY", pack_u32, unpack_u32, False),
    (USE_CANDIDATE, "USE-CANDIDATE", pack_empty, unpack_empty, False),
    (PADDING, "PADDING", pack_bytes, unpack_bytes, False),
    (RESPONSE_PORT, "RESPONSE-PORT", pack_bytes, unpack_bytes, False),
    (ADDITIONAL_ADDRESS_FAMILY, "ADDITIONAL-ADDRESS-FAMILY", pack_u8_rffu, unpack_u8_rffu, False),
    (ADDRESS_ERROR_CODE, "ADDRESS-ERROR-CODE", pack_bytes, unpack_bytes, False),
    (PASSWORD_ALGORITHMS, "PASSWORD-ALGORITHMS", pack_bytes, unpack_bytes, False),
    (ALTERNATE_DOMAIN, "ALTERNATE-DOMAIN", pack_string, unpack_string, False),
    (ICMP, "ICMP", pack_bytes, unpack_bytes, False),
    (SOFTWARE, "SOFTWARE", pack_string, unpack_string, False),
    (ALTERNATE_SERVER, "ALTERNATE-SERVER", pack_address, unpack_address, False),
    (CACHE_TIMEOUT, "CACHE-TIMEOUT", pack_u32, unpack_u32, False),
    (FINGERPRINT, "FINGERPRINT", pack_u32, unpack_u32, False),
    (ICE_CONTROLLED, "ICE-CONTROLLED", pack_u64, unpack_u64, False),
    (ICE_CONTROLLING, "ICE-CONTROLLING", pack_u64, unpack_u64, False),
    (RESPONSE_ORIGIN, "RESPONSE-ORIGIN", pack_address, unpack_address, False),
    (OTHER_ADDRESS, "OTHER-ADDRESS", pack_address, unpack_address, False),
]
ATTRIBUTES_BY_TYPE = {entry[0]: entry for entry in ATTRIBUTES}
ATTRIBUTE_NAMES = {entry[0]: entry[1] for entry in ATTRIBUTES}
KNOWN_TYPES = frozenset(ATTRIBUTES_BY_TYPE)


@dataclass(slots=True)
class StunMessage:
    """A STUN message (RFC 8489 section 5).

    ``attributes`` keeps wire order and duplicates; :meth:`get` returns the first
    occurrence, which is the one RFC 8489 section 14 says a receiver uses.
    """

    method: int
    cls: int
    transaction_id: bytes
    attributes: list[StunAttribute] = field(default_factory=list)

    # -- parsing ------------------------------------------------------------

    @classmethod
    def parse(cls, data: bytes) -> StunMessage:
        """Parse one whole message; raise :class:`StunParseError` on any framing fault.

        Checks RFC 8489 section 6.3: top two bits zero, magic cookie, length a
        multiple of four that matches the datagram, attributes that tile the
        body exactly.
        """
        n = len(data)
        if n < HEADER_LENGTH:
            raise StunParseError("shorter than a STUN header")
        msg_type, length, cookie, txid = HEADER.unpack_from(data)
        if msg_type & 0xC000:
            raise StunParseError("top two bits are not zero")
        if cookie != COOKIE:
            raise StunParseError("bad magic cookie")
        if length & 3:
            raise StunParseError("length is not a multiple of four")
        if HEADER_LENGTH + length != n:
            raise StunParseError("length does not match the datagram")
        method, klass = split_type(msg_type)
        attributes: list[StunAttribute] = []
        pos = HEADER_LENGTH
        while pos < n:
            if pos + 4 > n:
                raise StunParseError("truncated attribute header")
            atype, alen = TLV.unpack_from(data, pos)
            start = pos + 4
            end = start + alen
            padded = end + (-alen & 3)
            if padded > n:
                raise StunParseError("attribute overruns the message")
            attributes.append(StunAttribute(atype, data[start:end], data[end:padded]))
            pos = padded
        return cls(method, klass, txid, attributes)

    # -- building -----------------------------------------------------------

    def __bytes__(self) -> bytes:
        body = b"".join(
            TLV.pack(a.type, len(a.value))
            + a.value
            + (a.padding if len(a.padding) == -len(a.value) & 3 else bytes(-len(a.value) & 3))
            for a in self.attributes
        )
        return (
            HEADER.pack(message_type(self.method, self.cls), len(body), COOKIE, self.transaction_id)
            + body
        )

    def add(self, atype: int, value: bytes) -> StunMessage:
        self.attributes.append(StunAttribute(atype, value, bytes(-len(value) & 3)))
        return self

    def set(self, name_or_type: int | str, value: Any) -> StunMessage:
        """Encode ``value`` with the attribute table and append it."""
        entry = _entry(name_or_type)
        raw = entry[2](value, self.transaction_id) if entry[4] else entry[2](value)
        return self.add(entry[0], raw)

    def add_integrity(self, key: bytes, sha256: bool = False) -> StunMessage:
        """Append MESSAGE-INTEGRITY(-SHA256) over the message so far (RFC 8489 14.5, 14.6)."""
        atype, size, algo = (
            (MESSAGE_INTEGRITY_SHA256, 32, "sha256") if sha256 else (MESSAGE_INTEGRITY, 20, "sha1")
        )
        self.add(atype, bytes(size))
        data = bytes(self)
        digest = hmac.new(key, data[: -4 - size], algo).digest()
        self.attributes[-1] = StunAttribute(atype, digest, b"")
        return self

    def add_fingerprint(self) -> StunMessage:
        """Append FINGERPRINT (RFC 8489 section 14.7); must be last."""
        self.add(FINGERPRINT, bytes(4))
        data = bytes(self)
        crc = (binascii.crc32(data[:-8]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
        self.attributes[-1] = StunAttribute(FINGERPRINT, U32.pack(crc), b"")
        return self

    # -- access -------------------------------------------------------------

    def get(self, atype: int) -> bytes | None:
        for a in self.attributes:
            if a.type == atype:
                return a.value
        return None

    def decoded(self, name_or_type: int | str) -> Any:
        """Typed value of the first attribute of that type, or None if absent."""
        entry = _entry(name_or_type)
        raw = self.get(entry[0])
        if raw is None:
            return None
        return entry[3](raw, self.transaction_id) if entry[4] else entry[3](raw)

    def types(self) -> list[int]:
        return [a.type for a in self.attributes]

    def __repr__(self) -> str:
        names = ", ".join(ATTRIBUTE_NAMES.get(a.type, hex(a.type)) for a in self.attributes)
        kind = {REQUEST: "request", INDICATION: "indication", SUCCESS: "success", ERROR: "error"}
        return (
            f"Message({METHOD_NAMES.get(self.method, hex(self.method))} {kind[self.cls]} "
            f"txid={self.transaction_id.hex()} [{names}])"
        )


def _entry(
    name_or_type: int | str,
) -> tuple[int, str, Callable[..., bytes], Callable[..., Any], bool]:
    if isinstance(name_or_type, int):
        return ATTRIBUTES_BY_TYPE[name_or_type]
    for entry in ATTRIBUTES:
        if entry[1] == name_or_type:
            return entry
    raise KeyError(name_or_type)


def _offset_of(data: bytes, wanted: int) -> int:
    """Byte offset of the first attribute of type ``wanted`` in a framed message, or -1."""
    n = len(data)
    pos = HEADER_LENGTH
    while pos + 4 <= n:
        atype, alen = TLV.unpack_from(data, pos)
        if atype == wanted:
            return pos
        pos += 4 + alen + (-alen & 3)
    return -1


def check_integrity(data: bytes, key: bytes, sha256: bool = False) -> bool:
    """Verify MESSAGE-INTEGRITY(-SHA256) of a framed message (RFC 8489 14.5, 14.6).

    The HMAC covers the header with its length rewritten to end just after the
    integrity attribute, then every attribute before it.
    """
    atype, size, algo = (
        (MESSAGE_INTEGRITY_SHA256, 32, "sha256") if sha256 else (MESSAGE_INTEGRITY, 20, "sha1")
    )
    pos = _offset_of(data, atype)
    if pos < 0:
        return False
    alen = U16.unpack_from(data, pos + 2)[0]
    # RFC 8489 14.6: MESSAGE-INTEGRITY-SHA256 may be truncated to no less than 16 bytes.
    if sha256:
        if alen < 16 or alen > 32 or alen & 3:
            return False
    elif alen != size:
        return False
    end = pos + 4 + alen
    if end > len(data):
        return False
    header = data[:2] + U16.pack(end - HEADER_LENGTH) + data[4:HEADER_LENGTH]
    digest = hmac.new(key, header + data[HEADER_LENGTH:pos], algo).digest()
    return hmac.compare_digest(digest[:alen], data[pos + 4 : end])


def check_fingerprint(data: bytes) -> bool | None:
    """True/False if FINGERPRINT is present and right/wrong; None if absent (RFC 8489 14.7)."""
    pos = _offset_of(data, FINGERPRINT)
    if pos < 0:
        return None
    if pos + 8 != len(data) or U16.unpack_from(data, pos + 2)[0] != 4:
        return False
    expected = (binascii.crc32(data[:pos]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    return bool(U32.unpack_from(data, pos + 4)[0] == expected)


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """Long-term credential key, MD5(username ":" realm ":" password) (RFC 8489 9.2.2).

    The RFC asks for OpaqueString (SASLprep) processing of the password; REST
    passwords are base64 and static users are ASCII here, for which it is the
    identity.
    """
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


def is_stun(data: bytes) -> bool:
    """Cheap demultiplexing test (RFC 7983): top bits 00 and the magic cookie."""
    return len(data) >= HEADER_LENGTH and data[0] < 0x40 and data[4:8] == COOKIE_BYTES
