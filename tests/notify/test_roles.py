"""Where the notifier runs: inside `wadud serve` (unless turned off), never
inside `wadud api` replicas (they run `wadud notify` beside them); its routes
on both; `wadud notify` refuses a half-configured channel at start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import notify.http
from bin import assembly

ROOT = Path(__file__).resolve().parents[2]


def test_serve_runs_the_notifier_and_api_does_not() -> None:
    assert notify.http.install_worker in assembly.installers("serve")
    assert notify.http.install_worker not in assembly.installers("api")
    assert notify.http.install in assembly.installers("api")


def test_wadud_notify_refuses_a_half_configured_channel(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "WADUD_DATA_DIR": str(tmp_path),
        "WADUD_NOTIFY_SMS_URL": "https://sms.example/hook",
        "WADUD_NOTIFY_WEBHOOK_SECRET": "",
    }
    done = subprocess.run(
        [sys.executable, "-m", "bin.main", "notify"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "notify_webhook_secret" in done.stderr
