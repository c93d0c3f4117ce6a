"""Wadud installs as a user installs it: the server with no extras, the
Python client with ``[client]``.

One wheel is built from this checkout and installed twice into a fresh
virtual environment that sees nothing of ours or of the suite's:

1. ``pip install wadud-*.whl``: every module of the server's packages
   imports from the installed copy, and aiortc, PyAV and aioice (the
   client's) are not there. The native leaves (``sfu.forward._fanout``,
   ``turn._relay``) may be missing where no compiler is: their users fall
   back to Python.
2. ``pip install 'wadud-*.whl[client]'``: the installed ``python -m
   wadud_client`` joins a call on the real server under test and publishes a
   tone, which the server answers.

pip may download (CI reaches PyPI), but takes what its cache has; the wheel
is built once, from a copy (pip builds a local folder in place, leaving
``build/`` and ``*.egg-info`` behind), without build isolation when
setuptools and wheel are at hand, and nothing is compiled to bytecode. The
time of each step is printed (``-s``).
"""

from __future__ import annotations

import asyncio
import configparser
import dataclasses
import datetime as dt
import importlib.util
import json
import os
import shutil
import sys
import time
import uuid
import venv
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Api, free_udp_port
from tests.wadud.test_floors import SERVER
from wadud.config import Settings
from wadud.state import keys
from wadud.web.auth import RoomGrant, issue_room_token

ROOT = Path(__file__).resolve().parents[1]
#: What only the ``client`` extra brings.
CLIENT_ONLY = ("aiortc", "av", "aioice")

pytestmark = pytest.mark.timeout(600)

#: Run in the new environment with ``-I`` (so neither this checkout nor the
#: environment's variables are on its path): imports every module under the
#: packages named in argv and prints what happened as JSON.
WALK = """
import importlib, importlib.util, json, pkgutil, sys
imported, failed, elsewhere = [], {}, []
absent = [name for name in ("aiortc", "av", "aioice") if importlib.util.find_spec(name) is None]

def failure(name):
    failed[name] = repr(sys.exc_info()[1])

def load(name):
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        failed[name] = repr(exc)
        return None
    imported.append(name)
    if not str(getattr(module, "__file__", "")).startswith(sys.prefix):
        elsewhere.append(name)
    return module

for top in sys.argv[1:]:
    package = load(top)
    if package is not None:
        for info in pkgutil.walk_packages(package.__path__, top + ".", onerror=failure):
            load(info.name)
print(json.dumps({"imported": imported, "failed": failed, "elsewhere": elsewhere,
                  "absent": absent}))
"""


def source_modules(packages: tuple[str, ...]) -> set[str]:
    """The modules of ``packages`` in this checkout (``.py`` files in regular packages)."""
    found = set()
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            folders = [ROOT.joinpath(*parts[:i]) for i in range(1, len(parts))]
            if all((folder / "__init__.py").exists() for folder in folders):
                found.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def copy_sources(into: Path) -> Path:
    """What the wheel is built from: the build files, the README (the long
    description) and the packages setup.cfg lists, without built leftovers."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = config["options.packages.find"]["include"].split()
    packages = sorted({name.split(".")[0] for name in listed})
    into.mkdir()
    for name in ("setup.cfg", "setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, into / name)
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info")
    for package in packages:
        shutil.copytree(ROOT / package, into / package, ignore=skip)
    return into


async def run(*command: str | Path, cwd: Path, within: float = 300) -> str:
    """Run ``command`` to its end; its output, or a failure that shows it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    proc = await asyncio.create_subprocess_exec(
        *map(str, command),
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"{command}: exit {proc.returncode}\n{err.decode()[-4000:]}"
    return out.decode()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Our own UDP port for the media worker: other suites use the default.
    return dataclasses.replace(settings, media_port=free_udp_port())


def join_link(api: Api) -> str:
    room = "install-" + uuid.uuid4().hex[:8]
    now = dt.datetime.now(dt.UTC)
    grant = RoomGrant(room, "installed", "Installed", "doctor", admin=True)
    token = issue_room_token(
        api.app[keys.SETTINGS],
        grant,
        not_before=now - dt.timedelta(seconds=5),
        expires=now + dt.timedelta(hours=1),
    )
    return f"{api.client.make_url(f'/call/{room}')}?token={token}"


async def test_the_server_installs_without_extras_and_the_client_with_its_own(
    api: Api, tmp_path: Path
) -> None:
    times: dict[str, float] = {}
    mark = time.monotonic()

    def took(step: str) -> None:
        nonlocal mark
        now = time.monotonic()
        times[step] = round(now - mark, 1)
        mark = now

    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    build_tools = all(importlib.util.find_spec(m) for m in ("setuptools", "wheel"))
    source = copy_sources(tmp_path / "src")
    await run(
        *pip, "wheel", "--no-deps", *(["--no-build-isolation"] if build_tools else []),
        "-w", tmp_path / "wheels", source, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheels").glob("wadud-*.whl")
    took("build the wheel")

    # No pip inside: the running pip installs into it (--python), which
    # spares bootstrapping one.
    venv.create(tmp_path / "venv", with_pip=False)
    python = tmp_path / "venv" / "bin" / "python"
    install = [*pip, "--python", str(python), "install", "--no-compile"]
    await run(*install, wheel, cwd=tmp_path)
    took("pip install wadud")

    walked = json.loads(await run(python, "-I", "-c", WALK, *SERVER, cwd=tmp_path))
    took("import the server's modules")
    assert walked["failed"] == {}
    assert walked["elsewhere"] == []
    assert sorted(walked["absent"]) == sorted(CLIENT_ONLY)
    assert source_modules(SERVER) <= set(walked["imported"])

    await run(*install, f"{wheel}[client]", cwd=tmp_path)
    took("pip install wadud[client]")

    out = await run(
        python, "-I", "-m", "wadud_client", "--url", join_link(api),
        "--no-video", "--duration", "1", "--report", "0.5", "--name", "installed",
        cwd=tmp_path, within=60,
    )  # fmt: skip
    took("a call through the installed client")
    lines: list[dict[str, Any]] = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["what"] == "joined", lines
    published = next(line for line in lines if line["what"] == "published")
    assert [t["source"] for t in published["tracks"]] == ["microphone"]
    print("install test:", times, "total", round(sum(times.values()), 1), "s")
