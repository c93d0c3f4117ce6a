"""deploy/k8s/: every manifest passes `kubernetes-validate --strict` (offline
OpenAPI schemas) for current Kubernetes versions, and the manifests agree with
each other and with the settings they carry: probes on every role, grace
periods longer than the drains they wait for, disruption budgets that select
a workload, one image everywhere."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.deploy.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
#: The newest schemas kubernetes-validate ships, and an older release still
#: widely run (managed clusters lag a few minor versions).
VERSIONS = ("1.33.0", "1.37.0")


def _docs() -> list[dict[str, Any]]:
    return [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]


def _kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _docs() if d["kind"] == kind]


def _workloads() -> list[dict[str, Any]]:
    return [d for d in _docs() if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job")]


def _role(container: dict[str, Any]) -> str:
    """The wadud role a container runs: its first argument, or the word after
    ``wadud`` in a shell wrapper's script."""
    if container.get("command") == ["sh", "-c"]:
        words = container["args"][0].split()
        return str(words[words.index("wadud") + 1])
    return str(container["args"][0])


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_passes_strict_validation(version: str) -> None:
    assert len(MANIFESTS) >= 5
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            version,
            *map(str, MANIFESTS),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Every resource was checked, none skipped for want of a schema.
    passed = done.stdout.count(" passed for resource ")
    assert passed == len(_docs()), done.stdout


def test_roles_probes_and_grace_periods_agree_with_the_settings() -> None:
    config = _kind("ConfigMap")[0]["data"]["wadud.toml"]
    settings = tomllib.loads(config)
    drain = float(settings["media"]["drain_timeout"])
    shutdown = float(settings["shutdown_timeout"])
    roles: dict[str, list[dict[str, Any]]] = {}
    images: set[str] = set()
    for w in _workloads():
        pod = w["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        images.add(container["image"])
        role = _role(container)
        roles.setdefault(role, []).append(w)
        assert pod["securityContext"]["runAsNonRoot"] is True, w["metadata"]["name"]
        if role in ("migrate", "load"):
            continue  # Jobs that run to their end: no probes
        assert {"livenessProbe", "readinessProbe"} <= container.keys(), w["metadata"]["name"]
        assert "requests" in container["resources"], w["metadata"]["name"]
        grace = pod["terminationGracePeriodSeconds"]
        if role == "media":
            # Workers are killed drain + 10 s after SIGTERM; the kubelet must
            # not SIGKILL the node before that.
            assert grace > drain + 10, (w["metadata"]["name"], grace)
            assert pod["hostNetwork"] is True
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            env = {e["name"]: e for e in container["env"]}
            assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
            assert "--announce=$(HOST_IP)" in container["args"]
            workers = int(settings["media"]["workers"])
            udp = [p for p in container["ports"] if p["protocol"] == "UDP"]
            assert sorted(p["hostPort"] for p in udp) == [
                int(settings["media"]["port"]) + i for i in range(workers)
            ]
        if role == "api":
            pre = container["lifecycle"]["preStop"]["sleep"]["seconds"]
            assert grace > pre + shutdown, grace
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            annotations = w["spec"]["template"]["metadata"]["annotations"]
            metrics_port = settings["metrics_listen"].rsplit(":", 1)[1]
            assert annotations["prometheus.io/port"] == metrics_port
        if role == "notify":
            # No public port: its probes are on the private metrics listener.
            metrics_port = int(settings["metrics_listen"].rsplit(":", 1)[1])
            (port,) = [p for p in container["ports"] if p["name"] == "metrics"]
            assert port["containerPort"] == metrics_port
            assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        if role == "sip":
            # SIP and RTP on the node's own addresses, announced as such;
            # the spoken prompts cached where the read-only root allows.
            assert pod["hostNetwork"] is True
            env = {e["name"]: e for e in container["env"]}
            assert env["WADUD_SIP_PUBLIC_HOST"]["value"] == "$(HOST_IP)"
            cache = env["XDG_CACHE_HOME"]["value"]
            assert cache in {m["mountPath"] for m in container["volumeMounts"]}
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
            ports = {(p["containerPort"], p["protocol"]) for p in container["ports"]}
            port = int(settings["sip"]["listen"].rsplit(":", 1)[1])
            assert {(port, "UDP"), (port, "TCP")} <= ports
    assert {"api", "media", "turn", "migrate", "notify", "sip"} <= roles.keys()
    assert {w["metadata"]["labels"]["wadud.io/region"] for w in roles["media"]} == {"pk", "ae"}
    assert len(images) == 1, images


def test_the_configmaps_bridge_settings_are_a_bridge_the_api_offers_calls_from(
    tmp_path: Path,
) -> None:
    from booking.phone_calls import offered
    from sip.node.settings import bridge_config
    from wadud.config import sources

    config = _kind("ConfigMap")[0]["data"]["wadud.toml"]
    path = tmp_path / "wadud.toml"
    path.write_text(config)
    env = {"WADUD_SECRET_KEY": "k" * 48, "WADUD_SIP_PUBLIC_HOST": "192.0.2.7"}
    settings = sources.load(file=path, env=env)
    bridge = bridge_config(settings)
    assert bridge is not None and bridge.public_host == "192.0.2.7"
    assert offered(settings)


def test_the_load_job_runs_one_shard_of_one_seed_per_pod() -> None:
    (job,) = [w for w in _workloads() if w["metadata"]["name"] == "wadud-load"]
    spec = job["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(env["SHARDS"])
    script = container["args"][0]
    # The 0-based completion index made the 1-based shard; the log is the JSON.
    assert '--shard "$((JOB_COMPLETION_INDEX + 1))/$SHARDS"' in script
    assert '--seed "$SEED"' in script and "--json - --quiet" in script
    assert {"secretRef": {"name": "wadud-load-key"}} in container["envFrom"]
    # The script's options are the command's own.
    from wadud_client.load.cli import parser

    words = script.replace('"', "").split()
    options = [w for w in words[words.index("load") + 1 :] if w.startswith("--")]
    known = {o for a in parser()._actions for o in a.option_strings}
    assert set(options) <= known, set(options) - known


def test_every_disruption_budget_and_service_selects_a_workload() -> None:
    pods = [w["spec"]["template"]["metadata"]["labels"] for w in _workloads()]

    def selects(selector: dict[str, str]) -> bool:
        return any(selector.items() <= labels.items() for labels in pods)

    for pdb in _kind("PodDisruptionBudget"):
        assert selects(pdb["spec"]["selector"]["matchLabels"]), pdb["metadata"]["name"]
    for svc in _kind("Service"):
        assert selects(svc["spec"]["selector"]), svc["metadata"]["name"]
    names = {s["metadata"]["name"] for s in _kind("Service")}
    for ing in _kind("Ingress"):
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] in names


def test_manifests_are_listed_in_the_docs() -> None:
    readme = (ROOT / "deploy" / "README.md").read_text()
    for path in MANIFESTS:
        assert f"k8s/{path.name}" in readme, path.name
