"""Dial-in end to end (issue 38): a caller on SIPp, with the test's own RTP
socket as the phone's media, rings the bridge inside the server
(``sip.role.install_worker``, as ``wadud serve`` runs it), keys the visit's
PIN and # in each form providers send it, and joins the visit's room as a
phone participant; the doctor, an ordinary participant, sees it, hears it,
is heard by it, and removes it, which hangs the phone up (SIPp gets BYE).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

import sip.role
from bin.assembly import build_app, in_process
from sip.errors import DialRefused
from sip.node.bridge import Bridge
from tests.booking.bookings.test_bookings import pool_of
from tests.booking.factories import Doctor
from tests.conftest import Api, free_port, free_udp_port
from tests.polling import wait_until
from tests.signalling.test_client_call import Call, calling
from tests.sip.node.test_desk import REFUSED_XML
from tests.sip.node.test_dial_out import ANSWER_XML, BUSY_XML
from tests.sip.node.test_pins import visit
from tests.sip.phone import RATE, Phone, Sipp, invite_scenario, phone, sine
from tests.sip.wire.samples import ALL, INVITE, OPTIONS
from wadud.config import Settings
from wadud_client.call import CallClient
from wadud_client.sources import ToneAudio

PIN_FORMS = ["rfc4733-marker", "rfc4733-no-marker", "sip-info", "in-band"]
CALLER = "+923001234534"


@pytest.fixture(scope="session")
def prompt_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prompts")


@pytest.fixture(autouse=True)
def _cache(prompt_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The prompts are spoken once per test process, not into the home folder.
    monkeypatch.setenv("XDG_CACHE_HOME", str(prompt_cache))


@pytest.fixture
def web_port() -> int:
    return free_port()


@pytest.fixture
def trunk_port() -> int:
    """Where the trunk takes the calls the bridge places (a test's SIPp)."""
    return free_udp_port()


@pytest.fixture
def settings(settings: Settings, web_port: int, trunk_port: int) -> Settings:
    first = free_udp_port() & ~1
    trunk = {"networks": ["127.0.0.1/32"], "language": "en", "outbound": f"127.0.0.1:{trunk_port}"}
    return dataclasses.replace(
        settings,
        media_port=free_udp_port(),
        sip_listen="127.0.0.1:0",
        sip_rtp_ports=f"{first}-{first + 1}",
        sip_trunks={"shifa": trunk},
        sip_room_url=f"http://127.0.0.1:{web_port}/ws",
    )


@pytest.fixture
async def app(settings: Settings) -> web.Application:
    return build_app(settings, [*in_process(), sip.role.install_worker])


@pytest.fixture
async def api(
    app: web.Application, web_port: int, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Api]:
    import aioice.ice

    # aioice leaves loopback out of its host candidates; a loopback call needs it.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=web_port))
    await client.start_server()
    try:
        yield Api(client, app)
    finally:
        await client.close()


@pytest.fixture
async def call(api: Api) -> AsyncIterator[Call]:
    async with calling(api) as c:
        yield c


def bridge_of(api: Api) -> Bridge:
    bridge = api.app[sip.role.BRIDGE]
    assert isinstance(bridge, Bridge)
    return bridge


async def key_pin(line: Phone, form: str, pin: str) -> None:
    """The PIN and # in ``form`` (SIP INFO is SIPp's: the phone only talks)."""
    await line.first_audio()
    if form == "rfc4733-marker":
        await line.key_events(pin + "#", marker=True)
    elif form == "rfc4733-no-marker":
        await line.key_events(pin + "#", marker=False)
    elif form == "in-band":
        await line.key_tones(pin + "#")


def phone_of(doctor: CallClient) -> dict[str, Any] | None:
    return next((p for p in doctor.participants.values() if p.get("name") == "Phone ••34"), None)


async def dial_in(
    tmp_path: Path, api: Api, call: Call, bid: str, pin: str, form: str, **doctor: Any
) -> tuple[Phone, Sipp, CallClient, str]:
    """The doctor in the visit's room, the phone called in and in the room
    too: (the phone's RTP, its SIPp, the doctor, the phone's participant id)."""
    room = f"booking-{bid}"
    doc = await call.join(room, "doctor", role="doctor", admin=True, **doctor)
    line = await phone()
    sipp = Sipp(
        tmp_path / "sipp",
        invite_scenario(
            line.port,
            dtmf=form != "in-band",
            info_keys=pin + "#" if form == "sip-info" else "",
            caller=CALLER,
        ),
        bridge_of(api).port,
    )
    await sipp.start()
    keying = asyncio.create_task(key_pin(line, form, pin))
    try:
        await doc.wait_until(lambda: phone_of(doc) is not None, within=30)
        await keying
    except BaseException:
        keying.cancel()
        await sipp.stop()
        raise
    entry = phone_of(doc)
    assert entry is not None
    return line, sipp, doc, str(entry["id"])


@pytest.mark.parametrize("form", PIN_FORMS)
async def test_a_caller_joins_the_visit_with_its_pin_keyed_in_every_form(
    tmp_path: Path, api: Api, call: Call, doctor: Doctor, form: str
) -> None:
    bid, pin = await visit(api, doctor)
    line, sipp, doc, phone_id = await dial_in(tmp_path, api, call, bid, pin, form)
    try:
        entry = doc.participants[phone_id]
        assert entry["role"] == "patient" and entry["device"] == "phone", entry
        # The doctor removes the phone: the bridge hangs up, and SIPp,
        # which waits for that BYE, answers it and ends with success.
        await doc.remove(phone_id)
        assert await sipp.finished() == 0, sipp.errors()
    finally:
        await sipp.stop()
        line.transport.close()
    assert not bridge_of(api).calls


def peak(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.shape[0])))
    return float(np.fft.rfftfreq(pcm.shape[0], 1 / rate)[int(np.argmax(spectrum))])


def level_at(pcm: np.ndarray, rate: int, frequency: float) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.shape[0])))
    freqs = np.fft.rfftfreq(pcm.shape[0], 1 / rate)
    band = (freqs > frequency - 30) & (freqs < frequency + 30)
    return float(spectrum[band].max() / spectrum.max())


async def test_the_room_hears_the_phone_and_the_phone_hears_the_room_but_itself(
    tmp_path: Path, api: Api, call: Call, doctor: Doctor
) -> None:
    bid, pin = await visit(api, doctor)
    line, sipp, doc, phone_id = await dial_in(
        tmp_path, api, call, bid, pin, "rfc4733-marker", consume=False
    )
    try:
        await doc.publish({"microphone": ToneAudio(440)})
        sister = await call.join(f"booking-{bid}", "sister", role="patient")
        await sister.publish({"microphone": ToneAudio(660)})
        # The phone says 1 kHz for four seconds; the doctor decodes what the
        # room sends of it, and the phone keeps what the room sends back.
        speaking = asyncio.create_task(line.speak(sine(1000, 4 * RATE)))
        await doc.wait_until(lambda: doc.received_from(phone_id, "audio"), within=20)
        track = doc.received_from(phone_id, "audio")[0].track
        assert track is not None
        heard = []
        for _ in range(150):
            frame = await asyncio.wait_for(track.recv(), 5)
            heard.append(frame.to_ndarray().reshape(-1, len(frame.layout.channels)).mean(axis=1))
        await speaking
        from_phone = np.concatenate(heard[-50:])
        to_phone = line.heard_pcm(1.0)
    finally:
        await sipp.stop()
        line.transport.close()
    assert abs(peak(from_phone, 48_000) - 1000) < 20
    assert abs(peak(to_phone, RATE) - 440) < 20 or abs(peak(to_phone, RATE) - 660) < 20
    assert level_at(to_phone, RATE, 440) > 0.3 and level_at(to_phone, RATE, 660) > 0.3
    # The phone never hears itself: at 1 kHz there is only the noise floor
    # of the coding either side of it, not a tone.
    floor = (level_at(to_phone, RATE, 900) + level_at(to_phone, RATE, 1100)) / 2
    assert level_at(to_phone, RATE, 1000) < max(1.5 * floor, 0.01), floor


def wrong(pin: str, k: int) -> str:
    return f"{(int(pin) + 1 + k) % 10**8:08d}"


async def test_three_wrong_pins_end_the_call_politely_and_are_audited(
    tmp_path: Path, api: Api, doctor: Doctor
) -> None:
    _, pin = await visit(api, doctor)
    keys = "".join(wrong(pin, k) + "#" for k in range(3))
    sipp = Sipp(
        tmp_path / "sipp",
        invite_scenario(free_udp_port(), dtmf=True, info_keys=keys, caller=CALLER),
        bridge_of(api).port,
    )
    await sipp.start()
    try:
        # SIPp keys the three wrong PINs as INFO, then waits for the BYE
        # that follows the goodbye prompt.
        assert await sipp.finished(60) == 0, sipp.errors()
    finally:
        await sipp.stop()
    rows = await pool_of(api).fetch(
        "SELECT detail FROM audit_log WHERE action = 'phone.pin_failed' ORDER BY seq"
    )
    assert [json.loads(str(r["detail"])) for r in rows] == [
        {"caller": "••34", "trunk": "shifa"}
    ] * 3
    assert not bridge_of(api).calls


async def test_an_invite_from_no_trunk_is_refused_with_403(tmp_path: Path, api: Api) -> None:
    bridge = bridge_of(api)
    before = bridge.agent.unauthenticated
    counted = refused_metric()
    # The trunk sends from 127.0.0.1 alone: a caller from 127.0.0.2 is no trunk.
    sipp = Sipp(tmp_path / "sipp", REFUSED_XML, bridge.port)
    sipp.host = "127.0.0.2"
    await sipp.start()
    try:
        assert await sipp.finished() == 0, sipp.errors()
    finally:
        await sipp.stop()
    assert bridge.agent.unauthenticated == before + 1
    assert not bridge.calls
    assert refused_metric() == counted + 1


def refused_metric() -> float:
    value = REGISTRY.get_sample_value(
        "wadud_sip_invites_refused_total", {"reason": "unauthenticated"}
    )
    return value or 0.0


def malformed(seed: int, count: int) -> list[bytes]:
    """SIP that is not: valid messages cut short, bytes flipped, lines
    doubled and dropped, a header a megabyte long, a thousand Vias."""
    rng = random.Random(seed)
    samples = list(ALL.values())
    out = [
        INVITE.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1),
        INVITE.replace(b"Content-Length: ", b"Content-Length: 99999", 1),
        b"INVITE sip:x SIP/2.0\r\nVia: " + b"a" * 60_000 + b"\r\n\r\n",
        b"OPTIONS sip:x SIP/2.0\r\n" + b"Via: SIP/2.0/UDP h;branch=z9hG4bKx\r\n" * 1000 + b"\r\n",
        b"\x00" * 512,
        b"\r\n\r\n\r\n",
    ]
    while len(out) < count:
        data = bytearray(rng.choice(samples))
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(data))
            if rng.random() < 0.5:
                data[at] = rng.randrange(256)
            else:
                del data[at : at + rng.randint(1, 40)]
        lines = bytes(data).split(b"\r\n")
        if rng.random() < 0.3 and len(lines) > 2:
            lines.insert(rng.randrange(len(lines)), rng.choice(lines))
        out.append(b"\r\n".join(lines))
    return out


async def test_malformed_sip_gets_no_traceback_and_the_live_call_goes_on(
    tmp_path: Path, api: Api, call: Call, doctor: Doctor, caplog: pytest.LogCaptureFixture
) -> None:
    bid, pin = await visit(api, doctor)
    line, sipp, doc, phone_id = await dial_in(tmp_path, api, call, bid, pin, "sip-info")
    bridge = bridge_of(api)
    try:
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        class Reply(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                if b"opt-probe-" in data:
                    answers.put_nowait(data)

        probe, _ = await loop.create_datagram_endpoint(Reply, local_addr=("127.0.0.1", 0))
        port = probe.get_extra_info("sockname")[1]
        batch = malformed(38, 400)
        for start in range(0, len(batch), 50):
            for data in batch[start : start + 50]:
                probe.sendto(data, ("127.0.0.1", bridge.port))
            # Then a well-formed OPTIONS: once it is answered, every datagram
            # before it has been read (fifty at a time fit the socket's buffer).
            options = OPTIONS.replace(
                b"TCP [2001:db8::7]:5060;branch=z9hG4bKopt77",
                f"UDP 127.0.0.1:{port};branch=z9hG4bKopt-probe-{start}".encode(),
            )
            probe.sendto(options, ("127.0.0.1", bridge.port))
            answer = await asyncio.wait_for(answers.get(), 10)
            assert answer.startswith(b"SIP/2.0 200 "), answer
        probe.close()
        # The call is still up: the phone still hears the bridge, and is in the room.
        heard = len(line.heard)
        await doc.wait_until(lambda: len(line.heard) >= heard + 25, within=5)
        assert phone_id in doc.participants
        assert bridge.calls
        await doc.remove(phone_id)
        assert await sipp.finished() == 0, sipp.errors()
    finally:
        await sipp.stop()
        line.transport.close()
    assert sum(bridge.endpoint.stats.malformed.values()) >= len(batch) // 2
    assert not [r for r in caplog.records if r.exc_info], [
        r.getMessage() for r in caplog.records if r.exc_info
    ]


async def test_a_recorded_visit_is_joined_only_after_the_caller_keys_1(
    tmp_path: Path, api: Api, call: Call, doctor: Doctor
) -> None:
    bid, pin = await visit(api, doctor)
    room = f"booking-{bid}"
    doc = await call.join(room, "doctor", role="doctor", admin=True)
    await doc.publish({"microphone": ToneAudio(440)})
    await doc.request("record", on=True)
    await doc.wait_until(lambda: doc.recording.get("state") == "on", within=10)
    line = await phone()
    sipp = Sipp(
        tmp_path / "sipp",
        invite_scenario(line.port, dtmf=True, info_keys=pin + "#", caller=CALLER),
        bridge_of(api).port,
    )
    await sipp.start()
    try:
        # In the room, but asked about the recording: nothing published yet.
        await doc.wait_until(lambda: phone_of(doc) is not None, within=30)
        entry = phone_of(doc)
        assert entry is not None
        phone_id = str(entry["id"])

        def published() -> bool:
            return any(t.get("participant") == phone_id for t in doc.room_tracks.values())

        assert not published()
        # The notice plays; the caller keys 1, and only then is heard.
        await line.first_audio()
        await line.key_events("1", marker=True)
        await doc.wait_until(published, within=20)
        assert doc.recording.get("state") == "on"
        await doc.remove(phone_id)
        assert await sipp.finished() == 0, sipp.errors()
    finally:
        await sipp.stop()
        line.transport.close()


def dialling_through(api: Api, port: int, allow: tuple[str, ...] = ()) -> Bridge:
    """The bridge, its trunk now taking the calls it places at ``port``."""
    bridge = bridge_of(api)
    trunks = tuple(
        dataclasses.replace(t, outbound=("127.0.0.1", port), dial_allow=allow)
        for t in bridge.config.trunks
    )
    bridge.config = dataclasses.replace(bridge.config, trunks=trunks)
    return bridge


async def test_the_bridge_calls_the_patient_into_the_visit_and_tells_busy_apart(
    tmp_path: Path, api: Api, call: Call, doctor: Doctor
) -> None:
    bid, _ = await visit(api, doctor)
    await pool_of(api).execute(
        """UPDATE users SET phone = $2
           WHERE id = (SELECT patient_id FROM bookings WHERE id = $1)""",
        uuid.UUID(bid),
        CALLER,
    )
    doc = await call.join(f"booking-{bid}", "doctor", role="doctor", admin=True)
    patient = Sipp.callee(tmp_path / "answers", ANSWER_XML)
    await patient.start()
    try:
        bridge = dialling_through(api, patient.listen)
        # Not an arbitrary number: neither the patient's nor allowed.
        with pytest.raises(DialRefused):
            await bridge.dial_out(bid, number="+971500000001")
        placed = await bridge.dial_out(bid)
        # The patient answers (SIPp), and the bridge brings the call into the
        # room, as a phone, with no PIN to key.
        await wait_until(lambda: phone_of(doc) is not None or placed.ended, within=30, every=0.1)
        entry = phone_of(doc)
        assert not placed.ended, placed.state
        assert entry is not None and entry["device"] == "phone"
        await wait_until(lambda: placed.state == "in room", within=10)
        # A trunk at its max_calls places no more.
        bridge.config = dataclasses.replace(
            bridge.config,
            trunks=tuple(dataclasses.replace(t, max_calls=1) for t in bridge.config.trunks),
        )
        with pytest.raises(DialRefused, match="max_calls"):
            await bridge.dial_out(bid)
        await doc.remove(str(entry["id"]))
        assert await patient.finished() == 0, patient.errors()
    finally:
        await patient.stop()
    # A number on the trunk's dial_allow may be called too; this one is busy.
    busy = Sipp.callee(tmp_path / "busy", BUSY_XML)
    await busy.start()
    try:
        bridge = dialling_through(api, busy.listen, allow=("+971500000001",))
        placed = await bridge.dial_out(bid, number="+971500000001")
        await wait_until(lambda: placed.state == "busy", within=10)
        assert placed.id not in bridge.calls
    finally:
        await busy.stop()
