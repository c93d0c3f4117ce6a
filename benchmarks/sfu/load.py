"""The load process of the SFU benchmark: every synthetic transport, one blocking loop.

The driver (bench.py) speaks the signalling protocol; this process owns the UDP
sockets. It answers the driver's commands over a pipe (build an offer, answer
an offer, connect transports, run a load, close) and, while idle, keeps ICE
consent fresh (RFC 7675) on every connected transport so the worker does not
time them out between scenarios.

A run sends pre-built, pre-protected RTP from every publisher at video rate
(frames evenly spaced, a frame's packets paced, publishers staggered)
and drains every subscriber socket from one ``epoll`` loop. A simulcast
publisher sends its layers as Chromium does (one stream per RID, each with its
own SSRC, MID and RID extensions on the first second of packets, one
transport-wide sequence counter): its packets are built ahead but protected
as they are sent, so that a PLI or FIR from the worker turns that layer's
next frame into a keyframe, as an encoder would. Subscribers count
media packets without decrypting them (the RTP header is in the clear); probe
subscribers also unprotect each packet and read the publisher number and
packet index the payload carries (each simulcast layer is a stream number of
its own, so a probe sees which layer it gets and when that changes), which
gives the exact one-way latency from the send time recorded here (same
process, same clock) to the kernel's arrival stamp on the subscriber's
socket, and exact loss. The worker's CPU time
(user + system, psutil) is read at the edges of the measured window, after a
warm-up.

:class:`LoadClient` is the driver's end of the pipe.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import gc
import multiprocessing
import os
import select
import socket
import struct
import threading
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import psutil  # type: ignore[import-untyped]

from benchmarks.common import udp_rcvbuf_errors
from benchmarks.sfu import peer
from rtc.dtls import SRTP_AEAD_AES_128_GCM, DtlsCertificate
from rtc.errors import RtcpParseError, SrtpError
from rtc.rtcp import compound, feedback
from rtc.srtp import SrtpSession

CONSENT_INTERVAL = 2.5  # Chromium's ping interval on a selected, writable pair
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)


@dataclass
class Layer:
    """One simulcast layer of a publisher: a stream of its own."""

    number: int  # stream number, carried in every payload
    ssrc: int
    rid: str
    width: int
    height: int
    per_frame: int = 0  # packets per frame; 0: the plan's pps / fps
    size: int = 0  # packet size; 0: the plan's


@dataclass
class Publisher:
    transport: int
    number: int  # stream number, carried in every payload
    ssrc: int
    layers: list[Layer] = field(default_factory=list)  # simulcast: these instead
    # An audio track besides (its own stream number, 0: none): 20 ms Opus
    # frames, as RED (RFC 2198) with the frame before when ``red``.
    audio: int = 0
    audio_ssrc: int = 0
    red: bool = False


@dataclass
class Subscriber:
    transport: int
    publishers: list[int]  # stream numbers this transport receives
    probe: bool = False
    payload_type: int = peer.VP8_PT
    also: tuple[int, ...] = ()  # other payload types it counts (audio's)


@dataclass
class Plan:
    publishers: list[Publisher]
    subscribers: list[Subscriber]
    pps: float = 180.0
    fps: float = 30.0
    size: int = 1200
    warmup: float = 2.0
    measure: float = 8.0
    tail: float = 0.5
    keyframe_seconds: float = 2.0
    pacing: float = 2.5
    worker_pid: int | None = None


@dataclass
class RunResult:
    packets_per_publisher: int
    window_seconds: float
    worker_cpu: float
    worker_user: float
    worker_system: float
    load_cpu: float
    machine_busy: float  # CPU-seconds every process on the machine used in the window
    sent_total: int
    sent_window: int
    expected_total: int
    expected_window: int
    received_total: int
    received_window: int
    probe_expected_window: int
    probe_received_window: int
    latency_us: list[float] = field(default_factory=list)
    latency_sent_ms: list[float] = field(default_factory=list)  # send time in the window
    latency_read_us: list[float] = field(default_factory=list)  # to our reading it
    late_send_p99_us: float = 0.0
    late_send_max_us: float = 0.0
    auth_failures: int = 0
    rtcp_to_publishers: dict[str, int] = field(default_factory=dict)
    rtcp_to_subscribers: int = 0
    rcvbuf_errors: int = 0
    # Probes: (subscriber index, arrival ns on time.perf_counter_ns, stream
    # number) each time a subscriber's packets start coming from another stream
    # (a simulcast layer switch), and packets in the window by stream number.
    transitions: list[tuple[int, int, int]] = field(default_factory=list)
    probe_by_stream: dict[int, int] = field(default_factory=dict)
    keyframes_on_request: int = 0


def _busy() -> float:
    """CPU-seconds the whole machine has spent busy since boot (all cores)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


class LoadProcess:
    """Transports by id and the commands the driver sends."""

    def __init__(self) -> None:
        self.certificate = DtlsCertificate.generate(dt.datetime.now(dt.UTC))
        self.transports: dict[int, peer.Transport] = {}
        self._next_id = 1
        self._consent_due = 0.0

    # -- commands ----------------------------------------------------------------

    def new(self) -> int:
        tid = self._next_id
        self._next_id += 1
        self.transports[tid] = peer.Transport(self.certificate)
        return tid

    def offer(
        self,
        tid: int,
        ssrc: int,
        rtx_ssrc: int,
        rids: tuple[str, ...] = (),
        audio: str = "",
        audio_ssrc: int = 0,
    ) -> str:
        return peer.publish_offer(
            self.transports[tid], ssrc, rtx_ssrc, rids=rids, audio=audio, audio_ssrc=audio_ssrc
        )

    def published(self, tid: int, answer: str) -> None:
        self.transports[tid].set_remote(peer.remote_parameters(answer, offerer=True))

    def answer(
        self, tid: int, offer: str, transport_cc: bool = True, red: bool = True
    ) -> tuple[str, list[tuple[str, int, int]]]:
        t = self.transports[tid]
        t.set_remote(peer.remote_parameters(offer, offerer=False))
        text, tracks = peer.subscribe_answer(t, offer, transport_cc=transport_cc, red=red)
        return text, [(x.mid, x.ssrc, x.payload_type) for x in tracks]

    def connect(self, tids: list[int], timeout: float) -> dict[int, str]:
        todo = [self.transports[t] for t in tids if not self.transports[t].connected]
        peer.handshake(todo, timeout=timeout)
        return {t: self.transports[t].profile for t in tids}

    def close(self, tids: list[int]) -> None:
        for tid in tids:
            t = self.transports.pop(tid, None)
            if t is not None:
                t.close()

    def keepalive(self, now: float) -> None:
        """Consent checks on every connected transport, every CONSENT_INTERVAL."""
        if now < self._consent_due:
            return
        self._consent_due = now + CONSENT_INTERVAL
        for t in self.transports.values():
            if t.connected:
                with contextlib.suppress(OSError):
                    t.sock.send(t.binding_request())
            self._drain_control(t, now)

    def _drain_control(self, t: peer.Transport, now: float) -> None:
        # Between runs nothing reads the sockets: empty them so old media and
        # STUN answers do not count in the next run.
        while True:
            try:
                data = t.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            if data and 20 <= data[0] <= 63:
                t.on_datagram(data, now)

    # -- the run ----------------------------------------------------------------

    def run(self, plan: Plan, direct: bool = False) -> RunResult:
        per_frame = max(1, round(plan.pps / plan.fps))
        frames = max(1, round((plan.warmup + plan.measure) * plan.fps))
        keyframe_every = max(1, round(plan.keyframe_seconds * plan.fps))
        npub = len(plan.publishers)

        # Streams: one per single-layer publisher, one per simulcast layer.
        pub_socks: list[socket.socket] = []
        packets: list[list[bytes]] = []
        numbers: list[int] = []
        per_frames: list[int] = []
        stream_pub: list[int] = []  # the publisher's position, for its stagger
        # Simulcast layers are protected as sent (None: pre-protected).
        live: list[Callable[[int], bytes] | None] = []
        key_due: list[bool] = []
        by_layer_ssrc: dict[int, int] = {}
        misc = {"auth": 0, "rtcp_sub": 0, "keyframes": 0}
        extra: list[socket.socket] = []
        sub_socks: list[socket.socket] = []
        sub_transports: list[peer.Transport | None] = []
        direct_srtp: list[SrtpSession] = []
        if direct:
            # Baseline: each publisher straight to one receiver socket, same
            # packets, same SRTP cost to unprotect, no worker in between.
            for pi, p in enumerate(plan.publishers):
                key_a, key_b = os.urandom(28), os.urandom(28)
                tx = SrtpSession(SRTP_AEAD_AES_128_GCM.name, key_a, key_b)
                rx = SrtpSession(SRTP_AEAD_AES_128_GCM.name, key_b, key_a)
                a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                a.bind((peer.HOST, 0))
                b.bind((peer.HOST, 0))
                a.connect(b.getsockname())
                b.setblocking(False)
                extra += [a, b]
                pub_socks.append(a)
                stream = peer.Stream(p.number, p.ssrc)
                plain = peer.build_frames(
                    stream, frames, per_frame, fps=plan.fps, size=plan.size,
                    keyframe_every=keyframe_every,
                )  # fmt: skip
                packets.append(peer.protect_all(tx, plain))
                numbers.append(p.number)
                per_frames.append(per_frame)
                stream_pub.append(pi)
                live.append(None)
                key_due.append(False)
                sub_socks.append(b)
                sub_transports.append(None)
                direct_srtp.append(rx)
        else:
            for pi, p in enumerate(plan.publishers):
                t = self.transports[p.transport]
                if t.srtp is None:
                    raise peer.PeerError(f"publisher transport {p.transport} is not connected")
                if p.audio:
                    # Opus's 50 packets a second, as near as whole packets per frame go.
                    apf = max(1, round(50 / plan.fps))
                    audio = peer.build_audio(
                        peer.Stream(p.audio, p.audio_ssrc, mid=peer.AUDIO_MID),
                        frames * apf,
                        red=p.red,
                    )
                    pub_socks.append(t.sock)
                    packets.append(peer.protect_all(t.srtp, audio))
                    numbers.append(p.audio)
                    per_frames.append(apf)
                    stream_pub.append(pi)
                    live.append(None)
                    key_due.append(False)
                if not p.layers:
                    pub_socks.append(t.sock)
                    stream = peer.Stream(p.number, p.ssrc)
                    plain = peer.build_frames(
                        stream, frames, per_frame, fps=plan.fps, size=plan.size,
                        keyframe_every=keyframe_every,
                    )  # fmt: skip
                    packets.append(peer.protect_all(t.srtp, plain))
                    numbers.append(p.number)
                    per_frames.append(per_frame)
                    stream_pub.append(pi)
                    live.append(None)
                    key_due.append(False)
                    continue
                twcc = [0]  # the transport's one counter, shared by its layers
                for layer in p.layers:
                    pf = layer.per_frame or per_frame
                    keyframes: dict[int, bytes] = {}
                    plain = peer.build_frames(
                        peer.Stream(layer.number, layer.ssrc), frames, pf, fps=plan.fps,
                        size=layer.size or plan.size, keyframe_every=keyframe_every,
                        rid=layer.rid, rid_packets=round(plan.fps * pf),
                        width=layer.width, height=layer.height, keyframes=keyframes,
                    )  # fmt: skip
                    j = len(packets)
                    by_layer_ssrc[layer.ssrc] = j
                    pub_socks.append(t.sock)
                    packets.append(plain)
                    numbers.append(layer.number)
                    per_frames.append(pf)
                    stream_pub.append(pi)
                    key_due.append(False)
                    live.append(
                        _layer_sender(j, plain, keyframes, key_due, twcc, t.srtp.protect, misc)
                    )
            for s in plan.subscribers:
                t = self.transports[s.transport]
                if t.srtp is None:
                    raise peer.PeerError(f"subscriber transport {s.transport} is not connected")
                sub_socks.append(t.sock)
                sub_transports.append(t)
        nstreams = len(packets)
        index_of = {n: i for i, n in enumerate(numbers)}
        if len(index_of) != nstreams:
            raise ValueError("publisher and layer numbers must be unique")
        totals = [frames * pf for pf in per_frames]
        sent_ns = [array("q", bytes(8 * n)) for n in totals]

        # Drain leftovers (STUN answers, RTCP) so counting starts clean.
        now = time.monotonic()
        for t in self.transports.values():
            self._drain_control(t, now)
        for sock in sub_socks:
            with contextlib.suppress(OSError):
                while True:
                    sock.recv(4096)

        counts = [0] * len(sub_socks)
        probe_window = [0] * len(sub_socks)
        latency: list[int] = []
        latency_at: list[int] = []
        latency_read: list[int] = []
        # CLOCK_REALTIME minus CLOCK_MONOTONIC, to put kernel stamps on our clock.
        realtime_offset = time.time_ns() - time.perf_counter_ns()
        rtcp_pub: Counter[str] = Counter()
        last_stream = [-1] * len(sub_socks)
        transitions: list[tuple[int, int, int]] = []
        by_stream: Counter[int] = Counter()
        window = [0, 0]  # ns: start and end of the measured window (send times)
        perf_ns = time.perf_counter_ns
        buf = bytearray(4096)

        def counted(i: int, pt: int) -> bytes:
            """Which payload types subscriber ``i`` counts, as a 128-entry table."""
            table = bytearray(128)
            table[pt] = 1
            for other in () if direct else plan.subscribers[i].also:
                table[other] = 1
            return bytes(table)

        def counter(i: int, sock: socket.socket, t: peer.Transport | None, pt: int) -> Any:
            recv_into = sock.recv_into
            ours = counted(i, pt)

            def drain() -> None:
                n = 0
                while True:
                    try:
                        k = recv_into(buf)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        continue
                    if k >= 12 and buf[0] >> 6 == 2 and ours[buf[1] & 0x7F]:
                        n += 1
                    else:
                        _other(t, buf, k)
                counts[i] += n

            return drain

        def prober(
            i: int, sock: socket.socket, t: peer.Transport | None, pt: int, rx: SrtpSession
        ) -> Any:
            # The kernel stamps each datagram as it lands in the socket
            # (SO_TIMESTAMPNS, CLOCK_REALTIME): latency without our own delay
            # in reading it, which is kept apart as the "read" latency.
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            recvmsg = sock.recvmsg
            unprotect = rx.unprotect
            ours = counted(i, pt)

            def drain() -> None:
                n = 0
                while True:
                    try:
                        data, ancillary, _, _ = recvmsg(4096, _CMSG_SPACE)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        continue
                    read = perf_ns()
                    arrived = read
                    for level, kind, cdata in ancillary:
                        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                            sec, nsec = _TIMESPEC.unpack(cdata)
                            arrived = sec * 1_000_000_000 + nsec - realtime_offset
                    if len(data) >= 12 and data[0] >> 6 == 2 and ours[data[1] & 0x7F]:
                        n += 1
                        try:
                            plain = unprotect(data)
                        except SrtpError:
                            misc["auth"] += 1
                            continue
                        number, index = peer.read_tag(plain)
                        j = index_of.get(number)
                        if j is None or index >= totals[j]:
                            continue
                        if number != last_stream[i]:
                            last_stream[i] = number
                            transitions.append((i, arrived, number))
                        sent = sent_ns[j][index]
                        if window[0] <= sent < window[1]:
                            latency.append(arrived - sent)
                            latency_read.append(read - sent)
                            latency_at.append(sent)
                            probe_window[i] += 1
                            by_stream[number] += 1
                    else:
                        _other(t, bytearray(data), len(data))
                counts[i] += n

            return drain

        def _other(t: peer.Transport | None, data: bytearray, k: int) -> None:
            if k and data[0] >> 6 == 2 and 192 <= data[1] <= 223:
                misc["rtcp_sub"] += 1
            elif t is not None and k and (data[0] < 4 or 20 <= data[0] <= 63):
                t.on_datagram(bytes(data[:k]), time.monotonic())

        def publisher_reader(sock: socket.socket, t: peer.Transport | None) -> Any:
            def drain() -> None:
                while True:
                    try:
                        data = sock.recv(4096)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        continue
                    if not data:
                        continue
                    if data[0] >> 6 == 2 and t is not None and t.srtp is not None:
                        try:
                            for packet in compound.parse_compound(t.srtp.unprotect_rtcp(data)):
                                rtcp_pub[type(packet).__name__] += 1
                                # An encoder answers a keyframe request at its next frame.
                                if isinstance(packet, feedback.Pli):
                                    asked = [packet.media_ssrc]
                                elif isinstance(packet, feedback.Fir):
                                    asked = [ssrc for ssrc, _ in packet.entries]
                                else:
                                    continue
                                for ssrc in asked:
                                    j = by_layer_ssrc.get(ssrc)
                                    if j is not None:
                                        key_due[j] = True
                        except (SrtpError, RtcpParseError):
                            rtcp_pub["undecodable"] += 1
                    elif t is not None:
                        t.on_datagram(data, time.monotonic())

            return drain

        handlers: dict[int, Callable[[], None]] = {}
        ep = select.epoll()
        for i, sock in enumerate(sub_socks):
            st = sub_transports[i]
            pt = plan.subscribers[i].payload_type if not direct else peer.VP8_PT
            if direct:
                handler = prober(i, sock, None, pt, direct_srtp[i])
            elif plan.subscribers[i].probe:
                assert st is not None
                assert st.srtp is not None
                handler = prober(i, sock, st, pt, st.srtp)
            else:
                handler = counter(i, sock, st, pt)
            handlers[sock.fileno()] = handler
            ep.register(sock.fileno(), select.EPOLLIN)
        if not direct:
            for p in plan.publishers:
                t = self.transports[p.transport]
                if t.sock.fileno() not in handlers:
                    handlers[t.sock.fileno()] = publisher_reader(t.sock, t)
                    ep.register(t.sock.fileno(), select.EPOLLIN)
        consent = [] if direct else [t for t in self.transports.values() if t.connected]

        # The schedule: frame k of publisher j is due at k/fps + j/(fps*npub),
        # its packets spaced as a browser's pacer spaces them (Chromium paces
        # at 2.5 times the media rate); pacing 0 sends each frame in one burst.
        frame_ns = int(1e9 / plan.fps)
        stagger = frame_ns // max(1, npub)
        spacing = int(1e9 / (plan.pacing * plan.pps)) if plan.pacing > 0 else 0
        start = perf_ns() + 50_000_000
        order = sorted(
            (
                start
                + stream_pub[j] * stagger
                + (m // pf) * frame_ns
                + (m % pf) * min(spacing, frame_ns // pf),
                j,
                m,
            )
            for j, pf in enumerate(per_frames)
            for m in range(totals[j])
        )
        due_at = array("q", (x[0] for x in order))
        due_pub = array("I", (x[1] for x in order))
        due_idx = array("I", (x[2] for x in order))
        del order
        n_due = len(due_at)
        sends = [sock.send for sock in pub_socks]
        window[0] = start + int(plan.warmup * 1e9)
        window[1] = window[0] + int(plan.measure * 1e9)
        stop = window[1] + int(plan.tail * 1e9)
        consent_step = int(CONSENT_INTERVAL * 1e9) // max(1, len(consent))
        next_consent = start
        ci = 0
        q = 0
        lateness: list[int] = []
        snap0: list[int] | None = None
        snap1: list[int] | None = None
        cpu0 = cpu1 = None
        rcv0 = udp_rcvbuf_errors()
        worker = psutil.Process(plan.worker_pid) if plan.worker_pid else None
        load0 = load1 = busy0 = busy1 = 0.0
        wall0 = wall1 = 0
        poll = ep.poll
        # A collection pass over the pre-built packets would stall sending.
        gc.disable()
        try:
            while True:
                now = perf_ns()
                while q < n_due and due_at[q] <= now:
                    j = due_pub[q]
                    m = due_idx[q]
                    if window[0] <= due_at[q] < window[1]:
                        lateness.append(now - due_at[q])
                    sent_ns[j][m] = perf_ns()
                    sender = live[j]
                    # try costs nothing in 3.11; suppress() builds an object per packet.
                    try:  # noqa: SIM105
                        sends[j](packets[j][m] if sender is None else sender(m))
                    except OSError:
                        pass
                    q += 1
                if snap0 is None and now >= window[0]:
                    snap0 = list(counts)
                    busy0 = _busy()
                    cpu0 = worker.cpu_times() if worker else None
                    load0 = time.process_time()
                    wall0 = now
                elif snap1 is None and snap0 is not None and now >= window[1]:
                    snap1 = list(counts)
                    busy1 = _busy()
                    cpu1 = worker.cpu_times() if worker else None
                    load1 = time.process_time()
                    wall1 = now
                if consent and now >= next_consent:
                    t = consent[ci]
                    ci = (ci + 1) % len(consent)
                    next_consent += consent_step
                    with contextlib.suppress(OSError):
                        t.sock.send(t.binding_request())
                if now >= stop:
                    break
                wake = min(due_at[q] if q < n_due else stop, next_consent if consent else stop)
                if snap0 is None:
                    wake = min(wake, window[0])
                elif snap1 is None:
                    wake = min(wake, window[1])
                timeout = max(0, wake - perf_ns()) / 1e9
                for fd, _ in poll(timeout):
                    handlers[fd]()
        finally:
            gc.enable()
            ep.close()
            for sock in extra:
                sock.close()
        assert snap0 is not None
        assert snap1 is not None

        # What each subscriber should have had: the packets of its publishers.
        sent_window = [sum(1 for x in times if window[0] <= x < window[1]) for times in sent_ns]
        sent_total = [sum(1 for x in times if x) for times in sent_ns]
        if direct:
            subs_pubs = [[p.number] for p in plan.publishers]
        else:
            subs_pubs = [s.publishers for s in plan.subscribers]
        expected_window = sum(sent_window[index_of[n]] for pubs in subs_pubs for n in pubs)
        expected_total = sum(sent_total[index_of[n]] for pubs in subs_pubs for n in pubs)
        probe_idx = (
            range(len(sub_socks))
            if direct
            else [i for i, s in enumerate(plan.subscribers) if s.probe]
        )
        probe_expected = sum(sent_window[index_of[n]] for i in probe_idx for n in subs_pubs[i])
        late = sorted(lateness) or [0]
        worker_user = worker_system = 0.0
        if cpu0 is not None and cpu1 is not None:
            worker_user = cpu1.user - cpu0.user
            worker_system = cpu1.system - cpu0.system
        return RunResult(
            packets_per_publisher=max(totals),
            window_seconds=(wall1 - wall0) / 1e9,
            worker_cpu=worker_user + worker_system,
            worker_user=worker_user,
            worker_system=worker_system,
            load_cpu=load1 - load0,
            machine_busy=busy1 - busy0,
            sent_total=sum(sent_total),
            sent_window=sum(sent_window),
            expected_total=expected_total,
            expected_window=expected_window,
            received_total=sum(counts),
            received_window=sum(b - a for a, b in zip(snap0, snap1, strict=True)),
            probe_expected_window=probe_expected,
            probe_received_window=sum(probe_window),
            latency_us=[x / 1000 for x in latency],
            latency_sent_ms=[(x - window[0]) / 1e6 for x in latency_at],
            latency_read_us=[x / 1000 for x in latency_read],
            late_send_p99_us=late[min(len(late) - 1, int(len(late) * 0.99))] / 1000,
            late_send_max_us=late[-1] / 1000,
            auth_failures=misc["auth"],
            rtcp_to_publishers=dict(rtcp_pub),
            rtcp_to_subscribers=misc["rtcp_sub"],
            rcvbuf_errors=udp_rcvbuf_errors() - rcv0,
            transitions=transitions,
            probe_by_stream=dict(by_stream),
            keyframes_on_request=misc["keyframes"],
        )


def _layer_sender(
    j: int,
    plain: list[bytes],
    keyframes: dict[int, bytes],
    key_due: list[bool],
    twcc: list[int],
    protect: Callable[[bytes], bytes],
    misc: dict[str, int],
) -> Callable[[int], bytes]:
    """What a simulcast layer sends as its packet ``m``: the keyframe version of
    a frame's first packet when a keyframe was asked for, with the
    transport's next transport-wide sequence number, protected now."""
    offsets = array("H", (peer.transport_cc_offset(p) for p in plain))

    def packet(m: int) -> bytes:
        data = plain[m]
        if key_due[j]:
            key = keyframes.get(m)
            if key is not None:
                data = key
                key_due[j] = False
                misc["keyframes"] += 1
        buf = bytearray(data)
        seq = twcc[0]
        twcc[0] = (seq + 1) & 0xFFFF
        off = offsets[m]
        buf[off] = seq >> 8
        buf[off + 1] = seq & 0xFF
        return protect(bytes(buf))

    return packet


def serve(conn: Connection) -> None:
    """The process's main loop: one command at a time, keepalives in between."""
    proc = LoadProcess()
    while True:
        proc.keepalive(time.monotonic())
        if not conn.poll(0.25):
            continue
        try:
            command, args = conn.recv()
        except EOFError:
            break
        if command == "quit":
            proc.close(list(proc.transports))
            conn.send(("ok", None))
            break
        try:
            if command == "run":
                plan, direct = args
                result: Any = asdict(proc.run(plan, direct))
            else:
                result = getattr(proc, command)(*args)
            conn.send(("ok", result))
        except Exception as exc:  # reported to the driver, which stops
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


class LoadClient:
    """Commands to the load process. It answers them in order, one at a time;
    a reader thread hands each answer to its caller, so a caller that was
    cancelled (a participant closing mid-answer) cannot shift the others."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve, args=(child,), name="sfu-bench-load")
        self.proc.start()
        child.close()
        self.loop = asyncio.get_running_loop()
        self.waiting: collections.deque[asyncio.Future[tuple[str, Any]]] = collections.deque()
        self.reader = threading.Thread(target=self._read, name="sfu-bench-load-reader")
        self.reader.daemon = True
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                reply = self.conn.recv()
            except (EOFError, OSError):
                reply = ("error", "the load process is gone")
                with contextlib.suppress(RuntimeError):  # the loop already closed
                    self.loop.call_soon_threadsafe(self._fail_all, reply)
                return
            try:
                self.loop.call_soon_threadsafe(self._deliver, reply)
            except RuntimeError:
                return

    def _deliver(self, reply: tuple[str, Any]) -> None:
        if not self.waiting:
            return  # the answer to "quit"
        fut = self.waiting.popleft()
        if not fut.done():
            fut.set_result(reply)

    def _fail_all(self, reply: tuple[str, Any]) -> None:
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_result(reply)

    async def call(self, command: str, *args: Any, within: float = 120.0) -> Any:
        fut: asyncio.Future[tuple[str, Any]] = self.loop.create_future()
        # Sent and queued in one step of the loop: replies come in this order.
        self.waiting.append(fut)
        self.conn.send((command, args))
        status, result = await asyncio.wait_for(asyncio.shield(fut), within)
        if status != "ok":
            raise RuntimeError(f"load process: {command} failed: {result}")
        return result

    def pid(self) -> int:
        return int(self.proc.pid or 0)

    def stop(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(OSError, EOFError):
                self.conn.send(("quit", ()))
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()
