"""Which roles run the recorder: ``wadud serve`` (unless
``recording_in_serve`` is off), never ``wadud api`` (its deployments run
``wadud recorder`` replicas); every role that serves HTTP has the routes."""

from __future__ import annotations

import dataclasses

import recording.http
from bin import assembly
from bin.main import parser
from tests.conftest import served_with_worker
from wadud.config import Settings


def test_serve_records_and_api_serves_the_routes_only() -> None:
    serve, api = assembly.installers("serve"), assembly.installers("api")
    assert recording.http.install in serve and recording.http.install in api
    assert recording.http.install_worker in serve
    assert recording.http.install_worker not in api
    assert parser().parse_args(["recorder"]).command == "recorder"


async def test_recording_in_serve_off_runs_no_recorder(settings: Settings) -> None:
    for on in (True, False):
        with_on = dataclasses.replace(settings, recording_in_serve=on)
        async with served_with_worker(with_on, recording.http.install_worker) as app:
            assert (recording.http.RECORDER in app) is on
            assert recording.http.RECORDINGS in app
