"""The SFU benchmark: its synthetic peers against our rtc cores, and a tiny end-to-end run.

The synthetic peer (benchmarks/sfu/peer.py) is checked in-process against a
server made of the same cores the worker uses (ICE-lite agent, DTLS endpoint,
SRTP session, SDP answer and subscriber offer): descriptions both ways, ICE
with USE-CANDIDATE, DTLS in both roles, and SRTP packets that the other side
unprotects to the tag the peer put in. The smoke test runs the benchmark
itself for about a second against a real ``wadud serve``.
"""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path

from benchmarks.sfu import peer
from rtc.dtls import DtlsCertificate, DtlsEndpoint, DtlsRole, HandshakeComplete
from rtc.ice import IceLiteAgent, SelectedAddress, local_ufrag_of, random_credentials
from rtc.sdp.attributes import ABS_SEND_TIME, MID, TRANSPORT_CC, Direction
from rtc.sdp.session import SessionDescription
from rtc.sdp.transport import Fingerprint, Setup
from rtc.srtp import SrtpSession
from sfu.forward.keyframes import vp8_keyframe_start
from sfu.transport import offer_answer
from tests.benchmark_run import run_benchmark

ROOT = Path(__file__).resolve().parents[2]


class CoreServer:
    """An ICE-lite, DTLS-SRTP endpoint on one loopback socket, made of rtc/ cores only."""

    def __init__(self, certificate: DtlsCertificate) -> None:
        self.certificate = certificate
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.agents: dict[str, tuple[IceLiteAgent, DtlsEndpoint]] = {}
        self.by_addr: dict[tuple[str, int], tuple[IceLiteAgent, DtlsEndpoint]] = {}
        self.srtp: dict[tuple[str, int], SrtpSession] = {}

    def local(self) -> offer_answer.LocalParameters:
        ufrag, pwd = random_credentials()
        fp = Fingerprint("sha-256", self.certificate.fingerprint())
        return offer_answer.LocalParameters(ufrag, pwd, [fp], [("127.0.0.1", self.port)])

    def expect(self, local: offer_answer.LocalParameters, remote: SessionDescription) -> None:
        t = remote.transport()
        assert t.ice_ufrag and t.ice_pwd and t.setup
        role = DtlsRole.SERVER if t.setup is Setup.ACTIVE else DtlsRole.CLIENT
        agent = IceLiteAgent(local.ice_ufrag, local.ice_pwd, t.ice_ufrag, t.ice_pwd, now=0.0)
        endpoint = DtlsEndpoint(
            self.certificate, role, [(f.algorithm, f.value) for f in t.fingerprints]
        )
        self.agents[local.ice_ufrag] = (agent, endpoint)

    def tick(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except BlockingIOError:
                break
            ufrag = local_ufrag_of(data)
            if ufrag is not None:
                agent, endpoint = self.agents[ufrag]
                reply = agent.receive_stun(data, addr, 1.0)
                assert reply is not None
                self.sock.sendto(reply, addr)
                while (ice_event := agent.next_event()) is not None:
                    if isinstance(ice_event, SelectedAddress):
                        self.by_addr[ice_event.address] = (agent, endpoint)
                        endpoint.start(1.0)
            elif 20 <= data[0] <= 63:
                _, endpoint = self.by_addr[addr]
                endpoint.receive(data, 1.0)
                while (event := endpoint.next_event()) is not None:
                    assert isinstance(event, HandshakeComplete), event
                    self.srtp[addr] = SrtpSession.from_keys(event.keys, event.role)
            elif addr in self.srtp:
                # Media comes back re-protected, as a forwarder sends it on.
                session = self.srtp[addr]
                self.sock.sendto(session.protect(session.unprotect(data)), addr)
            for peer_addr, (_, endpoint) in self.by_addr.items():
                for datagram in endpoint.datagrams_to_send():
                    self.sock.sendto(datagram, peer_addr)

    def close(self) -> None:
        self.sock.close()


def test_synthetic_peer_against_rtc_cores() -> None:
    cert = DtlsCertificate.generate(dt.datetime.now(dt.UTC))
    server = CoreServer(DtlsCertificate.generate(dt.datetime.now(dt.UTC)))
    pub, sub = peer.Transport(cert), peer.Transport(cert)
    try:
        # Publish leg: our offer, the worker's answer (sfu.transport.offer_answer.answer takes DTLS
        # client).
        offer = peer.publish_offer(pub, ssrc=1111, rtx_ssrc=2222)
        local = server.local()
        answer = offer_answer.answer(SessionDescription.parse(offer), local)
        server.expect(local, SessionDescription.parse(offer))
        media = answer.media[0]
        assert [c.name for c in media.codecs] == ["VP8", "rtx"]
        assert {e.uri for e in media.extmaps} == {MID, ABS_SEND_TIME, TRANSPORT_CC}
        pub.set_remote(peer.remote_parameters(str(answer), offerer=True))
        assert pub.remote is not None and pub.remote.role is DtlsRole.SERVER

        # Subscribe leg: the worker's offer, our answer (we take DTLS client).
        local = server.local()
        forwarded = offer_answer.ForwardedTrack(
            "video", "0", "s", "t", ssrc=3333, codec=media.codecs[0], cname="c"
        )
        sub_offer = str(offer_answer.offer_for_subscriber([forwarded], local))
        sub_answer, tracks = peer.subscribe_answer(sub, sub_offer)
        parsed = SessionDescription.parse(sub_answer)
        assert not parsed.ice_lite
        assert parsed.media[0].direction is Direction.RECVONLY
        assert parsed.transport().setup is Setup.ACTIVE
        assert [(t.mid, t.ssrc, t.payload_type) for t in tracks] == [("0", 3333, peer.VP8_PT)]
        server.expect(local, parsed)
        sub.set_remote(peer.remote_parameters(sub_offer, offerer=False))

        peer.handshake([pub, sub], timeout=10.0, tick=server.tick)
        assert pub.connected and sub.connected
        assert len(server.srtp) == 2
        assert pub.profile == sub.profile == "SRTP_AEAD_AES_128_GCM"

        # Media: keyframe first, tags survive SRTP both ways.
        stream = peer.Stream(number=7, ssrc=1111)
        packets = peer.build_frames(stream, frames=3, per_frame=4, fps=30, keyframe_every=2)
        assert len(packets) == 12 and all(len(p) == 1200 for p in packets)
        first = packets[0]
        start = 12 + 4 + 12  # fixed header, extension block header, 12 octets of elements
        assert vp8_keyframe_start(first, start, len(first))
        assert not vp8_keyframe_start(packets[1], start, len(packets[1]))  # S=0
        assert not vp8_keyframe_start(packets[4], start, len(packets[4]))  # interframe
        assert vp8_keyframe_start(packets[8], start, len(packets[8]))  # frame 2: keyframe
        assert sum(p[1] >> 7 for p in packets) == 3  # one marker per frame
        assert pub.srtp is not None
        for p in peer.protect_all(pub.srtp, packets):
            pub.sock.send(p)
        got: list[tuple[int, int]] = []
        for _ in range(200):
            server.tick()
            try:
                data = pub.sock.recv(2048)
            except BlockingIOError:
                continue
            got.append(peer.read_tag(pub.srtp.unprotect(data)))
            if len(got) == len(packets):
                break
        assert got == [(7, i) for i in range(12)]
    finally:
        pub.close()
        sub.close()
        server.close()


def test_benchmark_quick_mode(tmp_path: Path) -> None:
    """About a second of one publisher to ten subscribers through a real ``wadud serve``."""
    proc, result = run_benchmark("sfu.run", tmp_path / "sfu.json", 100)
    assert "fwd/cpu-s" in proc.stdout
    assert result["direct_baseline_us"]["count"] > 0
    (run,) = result["results"]
    assert run["scenario"] == "1x10"
    assert run["subscriber_transports"] == 10
    assert run["srtp_profile"] == "SRTP_AEAD_AES_128_GCM"
    # Every subscriber got the publisher's packets through the worker, and the
    # probes (all ten: one room) unprotected every one of them to its tag.
    assert run["forwarded_window"] > 0
    assert run["loss_pct"] < 5
    assert run["probe_packets"] > 0
    assert run["auth_failures"] == 0
    assert run["latency_us"]["count"] == run["probe_packets"]
    assert run["worker_cpu_seconds"] > 0
    assert run["forwarded_per_cpu_second"] > 0
    assert run["errors"] == []
