"""What the SFU sent on a stream: RFC 3550 sender reports for a subscription (sections 6.4.1, 7.1).

:class:`SendStatistics`, one per outgoing (subscription) SSRC, builds a
sender report whose NTP/RTP timestamp pair is the publisher's own pairing,
carried through the subscription's timestamp rewrite, so a browser that
synchronises a participant's audio and video from our SRs lines them up
exactly as the publisher captured them. The reports ride in the leg's
compounds (:class:`sfu.feedback.reports.ReportScheduler`).

Sans-I/O (STYLE.md): ``now`` is seconds on the adapter's monotonic clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from rtc.rtcp.reports import SenderReport
from sfu.feedback.receiving import ReceiveStatistics

__all__ = ["OutgoingStream", "SendStatistics"]

_U32 = 0xFFFFFFFF


class OutgoingStream(Protocol):
    """What a sender report reads of an outgoing stream (``sfu.forward.table.Subscription`` has
    it).
    """

    @property
    def ssrc(self) -> int: ...

    @property
    def packets_sent(self) -> int: ...

    @property
    def octets_sent(self) -> int: ...


class SendStatistics:
    """Sender reports for one outgoing (subscription) stream (RFC 3550 6.4.1, 7.1).

    ``stream`` gives the SSRC and the packet and octet counts the Forwarder
    keeps. ``source`` is the publisher stream it forwards. ``timestamp_offset``
    returns the subscription's current RTP timestamp offset (outgoing minus
    incoming, modulo 2**32) from its :class:`rtc.rtp.RtpRewriter`, or ``None``
    before the rewriter's first packet.

    The SR's RTP timestamp is the publisher's RTP clock at ``now``
    (:meth:`ReceiveStatistics.rtp_timestamp_at`: its latest SR's pair,
    advanced by the clock rate) plus that offset, and its NTP timestamp is
    ours at ``now``. Every stream of one publisher is thereby shifted by the
    same amount, the least one-way delay of its recent SRs, so the relative
    timing of its audio and video, which is all lip-sync uses, is the
    publisher's own to within the difference between the two streams' least
    delays, however old a pair was when its SR left. Before the publisher's
    first SR the newest packet's timestamp stands in for the pair.
    """

    __slots__ = ("clock_rate", "cname", "source", "stream", "timestamp_offset")

    def __init__(
        self,
        stream: OutgoingStream,
        source: ReceiveStatistics,
        timestamp_offset: Callable[[], int | None],
        *,
        cname: str = "",
    ) -> None:
        self.stream = stream
        self.source = source
        self.clock_rate = source.clock_rate
        self.timestamp_offset = timestamp_offset
        self.cname = cname

    @property
    def ssrc(self) -> int:
        """The outgoing SSRC."""
        return self.stream.ssrc

    def sender_report(self, now: float, ntp: int) -> SenderReport | None:
        """An SR for ``now``, whose NTP timestamp is ``ntp`` (RFC 3550 6.4.1).

        ``None`` while nothing was sent on this SSRC: until then we are not a
        sender on it (RFC 3550 6.4).
        """
        stream = self.stream
        if stream.packets_sent <= 0:
            return None
        offset = self.timestamp_offset()
        rtp_ts = self.source.rtp_timestamp_at(now)
        if offset is None or rtp_ts is None:
            return None
        return SenderReport(
            ssrc=stream.ssrc,
            ntp_timestamp=ntp,
            rtp_timestamp=(rtp_ts + offset) & _U32,
            packet_count=stream.packets_sent & _U32,
            octet_count=stream.octets_sent & _U32,
        )
