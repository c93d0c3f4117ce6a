"""A media worker's arrival times are when datagrams came (the kernel's
receive stamps), not when its loop read them: a publisher's packets for
transport-cc and its sender reports, read after the loop was held up."""

from __future__ import annotations

import itertools
import threading
import time

from benchmarks.sfu import peer
from rtc.rtcp.compound import build_compound, parse_compound
from rtc.rtcp.feedback import Pli
from rtc.rtcp.reports import SenderReport
from rtc.rtcp.transport_cc import TransportCc
from sfu.node.worker import MediaWorker
from tests.polling import wait_until
from tests.sfu.conftest import Events

ROOM = "consult-1"


async def test_transport_cc_says_when_packets_came_even_when_the_loop_read_them_late(
    worker: MediaWorker, events: Events
) -> None:
    """A publisher sends a packet every 5 ms while the worker's loop is held
    up for about 150 ms: the worker reads them all at once after, yet its
    transport-cc feedback reports them about 5 ms apart, as they came (the
    kernel's receive time stamps). A worker that reported when its loop read
    them would tell the publisher's estimator that 150 ms of queueing built
    up and drained: it would cut its rate for a stall of the server's own."""
    ssrc = 0x2345
    assert worker.kernel_stamps
    async with peer.fan_out_in_process(worker, ROOM, ssrc, 0x6789, subscribers=0) as publisher:
        await events.wait_state("doctor", "publish", "connected", limit=5.0)
        assert publisher.srtp is not None
        packets = peer.protect_all(
            publisher.srtp, peer.build_frames(peer.Stream(0, ssrc), 30, 1, fps=200, size=300)
        )
        address = ("127.0.0.1", worker.port)
        sent: list[float] = []

        def send() -> None:
            for data in packets:
                publisher.sock.sendto(data, address)
                sent.append(time.monotonic())
                time.sleep(0.005)

        sender = threading.Thread(target=send)
        held_from = time.monotonic()
        sender.start()
        # Hold the worker's loop (this test's) until every packet was sent.
        sender.join()
        held = time.monotonic() - held_from
        reported: dict[int, float] = {}

        def read_feedback() -> bool:
            while True:
                try:
                    data = publisher.sock.recv(2048)
                except BlockingIOError:
                    return len(reported) >= len(packets)
                if 127 < data[0] < 192 and 191 < data[1] < 224:
                    for fb in parse_compound(publisher.srtp.unprotect_rtcp(data)):
                        if isinstance(fb, TransportCc):
                            reported.update(fb.arrivals())

        await wait_until(read_feedback, within=5.0)
    assert held >= 0.1, held
    arrivals = [reported[seq] for seq in range(len(packets))]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    sent_gaps = [b - a for a, b in itertools.pairwise(sent)]
    # Transport-cc's deltas are in 250 us ticks. The sender thread's own
    # clock, read after each sendto, may be late by a scheduling blip; read
    # when the loop was let go, the arrivals would all be within a tick or two.
    span, sent_span = arrivals[-1] - arrivals[0], sent[-1] - sent[0]
    assert abs(span - sent_span) < 0.05, (span, sent_span, gaps, sent_gaps)
    assert sum(g < 0.002 for g in gaps) <= 3, (gaps, sent_gaps)


async def test_a_sender_report_keeps_when_it_came_even_when_the_loop_read_it_late(
    worker: MediaWorker, events: Events
) -> None:
    """A publisher's SR arrives while the worker's loop is held up for about
    150 ms: the worker places its NTP/RTP pair on its clock by when the SR
    came (the kernel's receive stamp), not when the loop read it. Placed by
    the read, every subscriber's SR until the next one would name an RTP
    time 150 ms behind its packets (ci152 saw a subscriber's SRs a quarter
    of a second behind on a loaded machine), and the round trip our reports
    let the publisher measure would be 150 ms long."""
    ssrc = 0x3456
    assert worker.kernel_stamps
    async with peer.fan_out_in_process(worker, ROOM, ssrc, 0x789A, subscribers=0) as publisher:
        await events.wait_state("doctor", "publish", "connected", limit=5.0)
        assert publisher.srtp is not None
        address = ("127.0.0.1", worker.port)
        frames = peer.build_frames(peer.Stream(0, ssrc), 5, 1, fps=50, size=300)
        for data in peer.protect_all(publisher.srtp, frames):
            publisher.sock.sendto(data, address)
        (stats,) = await wait_until(
            lambda: [p.recv_stats[ssrc] for p in worker.tables.peers if ssrc in p.recv_stats]
        )
        report = build_compound([SenderReport(ssrc, ntp_timestamp=0x1234_5678_0000_0000)])
        publisher.sock.sendto(publisher.srtp.protect_rtcp(report), address)
        sent = time.monotonic()
        # Hold the worker's loop (this test's) with the SR in its socket.
        time.sleep(0.15)  # noqa: ASYNC251 - the hold is the point
        read_from = time.monotonic()
        await wait_until(lambda: stats.sr_ntp == 0x1234_5678_0000_0000, within=5.0)
    # The loop's clock is the monotonic one (uvloop's in milliseconds).
    assert abs(stats.sr_arrival - sent) < 0.03, (stats.sr_arrival - sent, read_from - sent)


async def test_only_a_compound_with_a_report_reads_the_receive_stamp(
    worker: MediaWorker, events: Events
) -> None:
    """Reading the kernel's stamp is a system call; of RTCP, only sender and
    receiver reports use it (their arrival), so feedback alone (a PLI here,
    a subscriber's transport-cc ten times a second) does not read it."""
    ssrc = 0x4567
    async with peer.fan_out_in_process(worker, ROOM, ssrc, 0x89AB, subscribers=0) as publisher:
        await events.wait_state("doctor", "publish", "connected", limit=5.0)
        assert publisher.srtp is not None
        address = ("127.0.0.1", worker.port)
        media = peer.protect_all(
            publisher.srtp, peer.build_frames(peer.Stream(0, ssrc), 5, 1, fps=50, size=300)
        )
        for data in media:
            publisher.sock.sendto(data, address)
        (stats,) = await wait_until(
            lambda: [p.recv_stats[ssrc] for p in worker.tables.peers if ssrc in p.recv_stats]
        )
        # Every packet read (each read its stamp) before the count starts.
        await wait_until(lambda: stats.received == len(media), within=5.0)
        stamp = worker._arrival
        read: list[float] = []

        def counted(now: float) -> float:
            read.append(now)
            return stamp(now)

        worker._arrival = counted
        feedback = build_compound([Pli(sender_ssrc=ssrc, media_ssrc=ssrc)])
        report = build_compound([SenderReport(ssrc, ntp_timestamp=0x2345_6789_0000_0000)])
        for compound in (feedback, feedback, report):
            publisher.sock.sendto(publisher.srtp.protect_rtcp(compound), address)
        # The socket gives them in order: the SR taken in, the PLIs were before it.
        await wait_until(lambda: stats.sr_ntp == 0x2345_6789_0000_0000, within=5.0)
    assert len(read) == 1, read
