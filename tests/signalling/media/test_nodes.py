"""The media registry for admins, on a single-process app (its own worker).
The cluster form (every node's workers from Redis) is exercised with real
``wadud media`` nodes in tests/signalling/cluster/test_cluster.py."""

from __future__ import annotations

from tests.conftest import Api
from wadud.web.api import Role


async def test_admins_see_the_worker_of_a_single_process_server(api: Api) -> None:
    admin = await api.user(Role.ADMIN)
    listed = await api.get("/api/v1/admin/media/workers", token=admin, expect=200)
    [worker] = listed["items"]
    assert worker["worker"] == "local-0" and worker["state"] == "ready"
    assert worker["port"] > 0 and worker["transports"] == 0 and worker["rooms"] == 0


async def test_only_admins_see_media_workers(api: Api) -> None:
    patient = await api.user(Role.PATIENT)
    await api.get("/api/v1/admin/media/workers", token=patient, expect=403)
    await api.get("/api/v1/admin/media/workers", expect=401)
