"""deploy/compose.yaml under podman-compose: PostgreSQL, Redis, two `wadud api`
replicas behind nginx, media nodes for regions pk and ae, a TURN relay. The
test waits for the replicas, both media nodes and the notifier to be healthy, holds a call
between two aiortc participants through the proxy, and checks that `down`
leaves no container, volume or network of the project behind."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import free_port, free_udp_port
from tests.deploy.conftest import ROOT, Images, podman, podman_env
from wadud.config import Settings
from wadud.web.auth import RoomGrant, issue_room_token
from wadud_client.call import CallClient
from wadud_client.sources import TestPatternVideo, ToneAudio

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

COMPOSE = ROOT / "deploy" / "compose.yaml"
HEALTHY = ("api-1", "api-2", "media-pk", "media-ae", "notify")


@dataclass
class Topology:
    project: str
    http_port: int
    secret: str

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"


def _compose(project: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman-compose", "-p", project, "-f", str(COMPOSE), *args],
        env={**podman_env(), **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _leftovers(project: str) -> list[str]:
    """The project's containers and volumes, running or not."""
    label = f"label=io.podman.compose.project={project}"
    return [
        *podman("ps", "--all", "--filter", label, "--format", "{{.Names}}").stdout.split(),
        *podman("volume", "ls", "--filter", label, "--format", "{{.Name}}").stdout.split(),
    ]


def _remove_network(project: str) -> None:
    # podman-compose 1.0.3 (Debian 12) leaves the project's network after
    # `down`; later versions and docker compose remove it. Nothing runs on it.
    label = f"label=io.podman.compose.project={project}"
    for name in podman("network", "ls", "--filter", label, "--format", "{{.Name}}").stdout.split():
        podman("network", "rm", name, check=False)


@pytest.fixture
def topology(images: Images) -> Iterator[Topology]:
    if shutil.which("podman-compose") is None:
        pytest.skip(
            "podman-compose is not installed (apt-get install podman-compose; .ci/run does)"
        )
    project = f"wadud-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    secret = uuid.uuid4().hex * 2
    http_port, turn_port, turn_relay = free_port(), free_port(), free_udp_port()
    env = {
        "WADUD_IMAGE": images.wadud,
        "POSTGRES_IMAGE": images.standins["postgres"],
        "REDIS_IMAGE": images.standins["redis"],
        "PROXY_IMAGE": images.standins["nginx"],
        "WADUD_SECRET_KEY": secret,
        "TURN_SECRET": uuid.uuid4().hex,
        "HTTP_PORT": str(http_port),
        "PUBLIC_URL": f"http://127.0.0.1:{http_port}",
        "MEDIA_ANNOUNCE": "127.0.0.1",
        "MEDIA_PK_PORT": str(free_udp_port()),
        "MEDIA_AE_PORT": str(free_udp_port()),
        "TURN_PORT": str(turn_port),
        "TURN_MIN_PORT": str(turn_relay),
        "TURN_MAX_PORT": str(turn_relay),
    }
    started = time.monotonic()
    up = _compose(project, env, "up", "--detach")
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        topo = Topology(project, http_port, secret)
        waiting = set(HEALTHY)
        deadline = time.monotonic() + 180
        while waiting and time.monotonic() < deadline:
            for service in sorted(waiting):
                done = podman("healthcheck", "run", topo.container(service), check=False)
                if done.returncode == 0:
                    waiting.discard(service)
            time.sleep(1)
        logs = {s: podman("logs", "--tail", "20", topo.container(s), check=False) for s in waiting}
        assert not waiting, {s: (d.stdout + d.stderr)[-2000:] for s, d in logs.items()}
        print(
            f"\ncompose up: {', '.join(HEALTHY)} healthy {time.monotonic() - started:.1f} s"
            " after `podman-compose up`"
        )
        yield topo
    finally:
        down = _compose(project, env, "down", "--volumes")
        left = _leftovers(project)
        _remove_network(project)
        assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
    assert left == []


def _token(topo: Topology, room: str, identity: str, role: str) -> str:
    now = dt.datetime.now(dt.UTC)
    grant = RoomGrant(
        room=room,
        identity=identity,
        name=identity.title(),
        role=role,
        admin=role == "doctor",
        region="pk",
    )
    return issue_room_token(
        Settings(secret_key=topo.secret),
        grant,
        not_before=now - dt.timedelta(seconds=60),
        expires=now + dt.timedelta(hours=1),
    )


@pytest.fixture
def loopback_aiortc(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice leaves loopback out of its host candidates; the media nodes'
    published ports are reached on 127.0.0.1."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


async def test_a_call_through_the_proxy_between_two_participants(
    topology: Topology, loopback_aiortc: None
) -> None:
    url = f"http://127.0.0.1:{topology.http_port}"
    room = "compose-" + uuid.uuid4().hex[:8]
    doctor = CallClient(
        url, _token(topology, room, "dr-amina", "doctor"), room=room, label="doctor", ice_servers=[]
    )
    patient = CallClient(
        url,
        _token(topology, room, "pt-bilal", "patient"),
        room=room,
        label="patient",
        ice_servers=[],
    )
    try:
        for client in (doctor, patient):
            answer = await client.join()
            assert answer["type"] == "joined", answer
        started = time.monotonic()
        await doctor.publish({"camera": TestPatternVideo(), "microphone": ToneAudio()})
        await patient.publish({"camera": TestPatternVideo(), "microphone": ToneAudio()})

        def receiving(client: CallClient, other: CallClient) -> bool:
            pid = other.participant_id
            assert pid is not None
            video = client.received_from(pid, "video")
            audio = client.received_from(pid, "audio")
            return bool(video and audio and video[0].frames >= 10 and audio[0].frames >= 25)

        await asyncio.gather(
            doctor.wait_until(lambda: receiving(doctor, patient), 60),
            patient.wait_until(lambda: receiving(patient, doctor), 60),
        )
        print(
            f"call through the proxy: both sides decoding {time.monotonic() - started:.1f} s"
            " after publishing"
        )
    finally:
        # Leave as a real client does: participants that only drop their
        # socket stay for call_resume_grace, and media-pk's drain on `down`
        # waits for its room to empty (podman-compose 1.0.3 then kills it
        # after 10 s, its own default, whatever stop_grace_period says).
        await asyncio.gather(doctor.leave(), patient.leave(), return_exceptions=True)
