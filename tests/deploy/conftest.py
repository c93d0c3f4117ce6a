"""The container image and the compose topology, built and run with podman.

Where podman or debootstrap is missing the tests marked ``container`` are
skipped, saying so; `.ci/run` installs both. Images are built once per
session and podman's layer cache keeps later builds to seconds:

* ``localhost/wadud-test-base:bookworm``: Debian bookworm from debootstrap
  (deploy/debian-base.sh), kept between sessions (no registry is reachable
  here, so the Dockerfile's public base cannot be pulled);
* ``localhost/wadud-test:latest``: deploy/Dockerfile FROM that base;
* ``localhost/wadud-test-{postgres,redis,nginx}:latest``: stand-ins for the
  public images compose.yaml names (standins.Containerfile).

Every container, network and volume the tests make carries the
``wadud-test`` prefix, and the tests remove them; images stay for reuse.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BASE = "localhost/wadud-test-base:bookworm"
IMAGE = "localhost/wadud-test:latest"
STANDINS = ("postgres", "redis", "nginx")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def podman_env() -> dict[str, str]:
    # runc and ulimits the machine grants (containers.conf); nothing global.
    return {**os.environ, "CONTAINERS_CONF": str(HERE / "containers.conf")}


def podman(
    *args: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args],
        env=podman_env(),
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
    )


def _missing() -> str | None:
    for tool in ("podman", "debootstrap"):
        if shutil.which(tool) is None:
            return (
                f"{tool} is not installed (apt-get install podman debootstrap runc; .ci/run does)"
            )
    if os.geteuid() != 0:
        return "the container tests run podman as root (debootstrap needs it too)"
    return None


def _build(args: list[str], what: str) -> float:
    started = time.monotonic()
    done = podman("build", *args, check=False, timeout=1800)
    if done.returncode != 0:
        raise AssertionError(
            f"building {what} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return time.monotonic() - started


@dataclass
class Images:
    wadud: str
    standins: dict[str, str]
    build_seconds: float


@pytest.fixture(scope="session")
def images() -> Images:
    """Build (or reuse from the layer cache) the image and the stand-ins."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    if podman("image", "exists", BASE, check=False).returncode != 0:
        started = time.monotonic()
        subprocess.run(
            [str(ROOT / "deploy" / "debian-base.sh"), BASE],
            env=podman_env(),
            check=True,
            capture_output=True,
            timeout=1200,
        )
        print(f"\nbase image {BASE}: debootstrap + import {time.monotonic() - started:.1f} s")
    ca = []
    if HOST_CA.exists():
        # pip inside the build trusts what the host trusts (a TLS-intercepting
        # proxy's CA on CI machines).
        ca = [
            "--volume",
            f"{HOST_CA}:/run/host-ca.crt:ro",
            "--build-arg",
            "PIP_CERT=/run/host-ca.crt",
        ]
    seconds = _build(
        [
            "--format",
            "docker",
            "--file",
            str(ROOT / "deploy" / "Dockerfile"),
            "--build-arg",
            f"BASE_IMAGE={BASE}",
            *ca,
            "--tag",
            IMAGE,
            str(ROOT),
        ],
        IMAGE,
    )
    print(f"\nimage {IMAGE}: podman build {seconds:.1f} s (layer cache: later builds reuse it)")
    standins = {}
    for target in STANDINS:
        tag = f"localhost/wadud-test-{target}:latest"
        _build(
            [
                "--file",
                str(HERE / "standins.Containerfile"),
                "--target",
                target,
                "--build-arg",
                f"BASE_IMAGE={BASE}",
                "--tag",
                tag,
                str(HERE),
            ],
            tag,
        )
        standins[target] = tag
    return Images(IMAGE, standins, seconds)


@pytest.fixture
def container_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A container name of our own; whatever is left of it is removed."""
    name = f"wadud-test-{os.getpid()}-{request.node.name[:40]}".replace("[", "-").strip("]")
    yield name
    podman("rm", "--force", "--volumes", "--time", "0", name, check=False)
