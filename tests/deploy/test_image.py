"""deploy/Dockerfile: the image builds here from a locally bootstrapped Debian,
runs `wadud serve` as an unprivileged user, answers /healthz, holds every
role, and stops cleanly (exit 0, well within its grace period) on SIGTERM.
Run with ``-s`` to see the build time, the image size and the start time."""

from __future__ import annotations

import argparse
import json
import time
import urllib.request

import pytest

from bin.main import parser
from tests.conftest import free_port
from tests.deploy.conftest import Images, podman

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

#: Seconds `podman stop` waits before SIGKILL, as terminationGracePeriodSeconds.
GRACE = 30


def _get(url: str) -> tuple[int, dict[str, object]]:
    with urllib.request.urlopen(url, timeout=2) as answer:
        return answer.status, json.loads(answer.read())


def test_serve_answers_healthz_and_stops_cleanly_on_sigterm(
    images: Images, container_name: str
) -> None:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", images.wadud).stdout)
    print(f"\nimage {images.wadud}: {size / 1e6:.0f} MB")
    port = free_port()
    started = time.monotonic()
    podman(
        "run",
        "--detach",
        "--name",
        container_name,
        "--publish",
        f"127.0.0.1:{port}:8080",
        images.wadud,
    )
    deadline = started + 90
    status: tuple[int, dict[str, object]] | None = None
    while time.monotonic() < deadline:
        try:
            status = _get(f"http://127.0.0.1:{port}/healthz")
            break
        except OSError:
            time.sleep(0.2)
    assert status is not None, podman("logs", container_name, check=False).stderr[-3000:]
    print(
        f"wadud serve in the container: /healthz answered {time.monotonic() - started:.1f} s"
        " after `podman run`"
    )
    assert status == (200, {"status": "ok"})
    # Ready too: the embedded PostgreSQL runs and is migrated inside.
    assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 200
    # The image's own HEALTHCHECK passes, and nothing runs as root.
    assert podman("healthcheck", "run", container_name, check=False).returncode == 0
    top = podman("top", container_name, "user", "comm").stdout.split("\n")[1:]
    users = {line.split()[0] for line in top if line.strip()}
    assert users == {"wadud"}, top

    stopping = time.monotonic()
    podman("stop", "--time", str(GRACE), container_name, timeout=GRACE + 30)
    took = time.monotonic() - stopping
    print(f"SIGTERM to stopped: {took:.1f} s (grace {GRACE} s)")
    state = json.loads(podman("inspect", "--format", "{{json .State}}", container_name).stdout)
    # 0, not 137: the role drained and exited on SIGTERM, nobody SIGKILLed it.
    assert state["ExitCode"] == 0, state
    assert took < GRACE / 2
    logs = podman("logs", container_name).stderr
    assert "stopping embedded PostgreSQL" in logs


def test_image_holds_every_role_and_no_compiler(images: Images) -> None:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    roles = set(sub.choices)
    shown = podman("run", "--rm", images.wadud, "--help").stdout
    for role in roles:
        assert f"    {role}" in shown, (role, shown)
    assert {"serve", "api", "media", "turn", "migrate"} <= roles
    found = podman(
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        images.wadud,
        "-c",
        "command -v gcc cc c++ make || echo none",
    ).stdout.split()
    assert found == ["none"], found
    # The native hot loops were built in the build stage and came along, and
    # so did the load tester (deploy/k8s/load.yaml runs it from this image).
    native = podman(
        "run",
        "--rm",
        "--entrypoint",
        "python3",
        images.wadud,
        "-c",
        "import sfu.forward.native, sfu.forward._fanout, turn._relay; print('native');"
        " import wadud_client.load.cli, wadud_client.load.run; print('load')",
    ).stdout.split()
    assert native == ["native", "load"], native
    uid = podman("run", "--rm", "--entrypoint", "id", images.wadud, "-u").stdout.strip()
    assert uid != "0"
