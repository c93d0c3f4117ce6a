"""SIP over a byte stream, TCP or TLS (RFC 3261 section 18.3), and the CRLF
keepalives of RFC 5626 section 4.4.1 on streams and datagrams.

On a stream nothing but Content-Length says where a body ends, so a
message without it cannot be framed: the framer refuses it, and as every
byte after it is then of unknown meaning, it stays refused and the adapter
closes the connection (section 18.3). So does a head or body that would
grow past :data:`sip.wire.message.MAX_MESSAGE`, before it is buffered.

Between messages a client may send a keepalive ping, a double CRLF; the
server answers each with a single CRLF, the pong. The framer counts the
pings it skips, and :meth:`StreamFramer.data_to_send` hands over the pongs
to write, as a sans-I/O core returns what to send rather than sending it.
A lone CRLF (a pong to our own ping, or slack before a start line, which
section 7.5 says to ignore) is skipped without an answer.
"""

from __future__ import annotations

from sip.errors import SipParseError
from sip.wire.message import MAX_MESSAGE, Request, Response, parse_head

__all__ = ["PONG", "StreamFramer", "is_keepalive"]

PING = b"\r\n\r\n"
#: What answers a :data:`PING` (RFC 5626 section 4.4.1).
PONG = b"\r\n"
_HEAD_END = b"\r\n\r\n"


def is_keepalive(datagram: bytes) -> bool:
    """Whether a datagram is only CRLFs, the keepalive many phones and
    trunks send over UDP instead of RFC 5626's STUN one: dropped, not
    answered (section 4.4.2 answers only STUN on a datagram)."""
    return bool(datagram) and not datagram.strip(b"\r\n")


class StreamFramer:
    """Messages out of one connection's bytes (RFC 3261 section 18.3).

    ``feed(data)`` returns every message completed by ``data``, in order, and
    raises :class:`SipParseError` for a message that cannot be framed or
    read; from then on every ``feed`` raises the same error. Where the
    stream is cut between calls makes no difference to what comes out.
    """

    __slots__ = ("_buffer", "_error", "_pending", "_pongs", "_scanned")

    def __init__(self) -> None:
        self._buffer = bytearray()
        # How far the search for the end of a head got, so that a head that
        # arrives a byte at a time is scanned once, not once per byte.
        self._scanned = 0
        # A head read whose body has not all arrived: the message and the
        # body's length.
        self._pending: tuple[Request | Response, int] | None = None
        self._pongs = 0
        self._error: SipParseError | None = None

    def feed(self, data: bytes) -> list[Request | Response]:
        if self._error is not None:
            raise self._error
        self._buffer += data
        try:
            return self._drain()
        except SipParseError as exc:
            self._error = exc
            self._buffer.clear()
            raise

    def data_to_send(self) -> bytes:
        """A :data:`PONG` for each ping fed since the last call."""
        pongs, self._pongs = self._pongs, 0
        return PONG * pongs

    def _drain(self) -> list[Request | Response]:
        messages: list[Request | Response] = []
        buffer = self._buffer
        while True:
            if self._pending is None and not (self._skip_keepalives() and self._read_head()):
                return messages
            # _read_head has just set it, or an earlier feed did.
            assert self._pending is not None
            message, length = self._pending
            if len(buffer) < length:
                return messages
            message.body = bytes(buffer[:length])
            del buffer[:length]
            self._pending = None
            messages.append(message)

    def _skip_keepalives(self) -> bool:
        """Drop CRLFs before a start line; False while what is buffered may
        still turn out to be a ping."""
        buffer = self._buffer
        while buffer[:1] == b"\r":
            if buffer[:4] == PING:
                self._pongs += 1
                del buffer[:4]
            elif len(buffer) < 4 and PING.startswith(buffer):
                return False
            elif buffer[:2] == b"\r\n":
                del buffer[:2]
            else:
                break
        return bool(buffer)

    def _read_head(self) -> bool:
        """Read a whole head into ``_pending``; False until one has arrived."""
        buffer = self._buffer
        end = buffer.find(_HEAD_END, max(0, self._scanned - 3))
        if end < 0:
            if len(buffer) > MAX_MESSAGE:
                raise SipParseError("message too large", 413)
            self._scanned = len(buffer)
            return False
        if end + 4 > MAX_MESSAGE:
            raise SipParseError("message too large", 413)
        message, length = parse_head(bytes(buffer[:end]))
        if length is None:
            raise SipParseError("no Content-Length on a stream")
        if end + 4 + length > MAX_MESSAGE:
            raise SipParseError("message too large", 413)
        del buffer[: end + 4]
        self._scanned = 0
        self._pending = (message, length)
        return True
