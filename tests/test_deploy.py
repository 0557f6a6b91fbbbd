"""deploy/ is checked, not just shipped: the Kubernetes manifests against the current Kubernetes
schema, the compose file against the compose spec, the Dockerfile with hadolint, the Prometheus
rules with promtool (and their unit tests), the dashboard's and rules' metric names against the
metrics Aforo exports; and the containers' own commands, run here against the test stack."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import httpx
import kubernetes_validate
import orjson
import pytest
import yaml
from click.testing import CliRunner
from integration import env_of
from prometheus_client.parser import text_string_to_metric_families

import flows.monitoring  # noqa: F401  (its Bytewax Kafka source registers bytewax_kafka_consumer_lag)
import observe.metrics  # noqa: F401  (registers every Aforo metric)
from cli.main import main, run_cmd
from observe.metrics import REGISTRY
from sinks.postgres import connect
from stack.embedded import free_port

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
BIN = Path(sys.executable).parent


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests() -> list[Path]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = [K8S / name for name in kustomization["resources"]]
    assert all(p.exists() for p in listed), "kustomization.yaml lists a missing file"
    return [*listed, K8S / "secret.example.yaml"]


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: p.name)
def test_kubernetes_manifests_match_the_current_schema(path):
    version = kubernetes_validate.latest_version()
    for doc in _docs(path):
        kubernetes_validate.validate(doc, version, strict=True)  # raises, naming the field


def _containers() -> list[tuple[str, dict]]:
    found = []
    for path in _manifests():
        for doc in _docs(path):
            spec = doc.get("spec", {})
            pod = spec.get("template", {}).get("spec", {}) if "template" in spec else {}
            found += [(f"{doc['kind']}/{doc['metadata']['name']}", c) for c in pod.get("containers", [])]
    return found


def test_every_kubernetes_workload_runs_as_designed():
    workloads = {name: c for name, c in _containers()}
    assert set(workloads) == {"Job/aforo-migrate", "Deployment/aforo-api", "StatefulSet/aforo-metering",
                              "Deployment/aforo-monitor"}
    for name, c in workloads.items():
        security = c["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"], name
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], name
        if name != "Job/aforo-migrate":
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
    docs = {(d["kind"], d["metadata"]["name"]): d for p in _manifests() for d in _docs(p)}
    sts = docs[("StatefulSet", "aforo-metering")]
    headless = docs[("Service", sts["spec"]["serviceName"])]
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
    env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    # one address per replica, each the stable DNS name of that pod behind the headless service
    addresses = env["AFORO_CLUSTER_ADDRESSES"]["value"].split(",")
    assert addresses == [f"aforo-metering-{i}.aforo-metering:2101" for i in range(sts["spec"]["replicas"])]
    assert "pod-index" in env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert "volumeClaimTemplates" not in sts["spec"]  # stateless: it resumes from the ledger
    monitor = docs[("Deployment", "aforo-monitor")]["spec"]["template"]["spec"]
    assert monitor["volumes"][0]["persistentVolumeClaim"]["claimName"] == "aforo-monitor-recovery"
    assert monitor["containers"][0]["volumeMounts"][0]["mountPath"] == "/var/lib/aforo/recovery"
    assert {("PodDisruptionBudget", "aforo-api"), ("PodDisruptionBudget", "aforo-metering")} <= set(docs)
    for key in (("Deployment", "aforo-api"), ("StatefulSet", "aforo-metering"),
                ("Deployment", "aforo-monitor")):
        annotations = docs[key]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", key
        assert annotations["prometheus.io/path"] == "/metrics", key


def _command_args(args: list[str]) -> list[str]:
    """A container's args as the CLI gets them, Kubernetes' $(VAR) references given sample values."""
    sample = {"POD_INDEX": "0", "AFORO_CLUSTER_ADDRESSES": "a:1,b:1", "AFORO_WORKERS": "4"}
    return [re.sub(r"\$\((\w+)\)", lambda m: sample[m.group(1)], a) for a in args]


def _cluster_flags_supported() -> bool:
    return {"process_id", "addresses"} <= {p.name for p in run_cmd.params}


def _parses(args: list[str]) -> None:
    if args[0] == "run" and not _cluster_flags_supported():
        pytest.skip("`aforo run` has no --process-id/--addresses yet; the manifests are written for them")
    cmd = main.get_command(None, args[0])
    assert cmd is not None, args
    cmd.make_context(args[0], list(args[1:]))  # raises on an unknown option or a bad value


@pytest.mark.parametrize("name", ["Job/aforo-migrate", "Deployment/aforo-api", "Deployment/aforo-monitor",
                                  "StatefulSet/aforo-metering"])
def test_kubernetes_commands_are_valid_aforo_commands(name):
    _parses(_command_args(dict(_containers())[name]["args"]))


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_file_matches_the_compose_spec():
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                             "vendor.compose-spec", str(DEPLOY / "compose.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    services = _compose()["services"]
    assert {"kafka", "postgres", "redis", "migrate", "api", "monitor", "metering-0",
            "metering-1"} <= set(services)
    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft: no ZooKeeper
    for name, svc in services.items():
        for dependency in svc.get("depends_on", {}):
            assert dependency in services, (name, dependency)


@pytest.mark.parametrize("name", ["migrate", "api", "monitor", "metering-0", "metering-1"])
def test_compose_commands_are_valid_aforo_commands(name):
    _parses(_compose()["services"][name]["command"])


def test_dockerfile_lints_clean_and_ships_every_package():
    result = subprocess.run([str(BIN / "hadolint"), "--no-color", str(REPO / "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    dockerfile = (REPO / "Dockerfile").read_text()
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for top in {p.split(".")[0] for p in packages}:
        assert f"COPY {top} ./{top}" in dockerfile, f"the image lacks package {top}"
    assert "embedded" not in re.findall(r"pip install[^\n]*", dockerfile)[0]
    assert re.search(r"^USER 10001", dockerfile, re.M) and "FROM python:3.12-slim AS build" in dockerfile


def _promtool() -> str | None:
    local = REPO / ".tools" / "promtool"
    return str(local) if local.exists() else shutil.which("promtool")


def test_alert_rules_pass_promtool_and_their_unit_tests():
    promtool = _promtool()
    if promtool is None:
        pytest.skip("promtool is not installed (`make tools` fetches it from Debian's prometheus package)")
    for args in (["check", "rules", "aforo-rules.yaml"], ["test", "rules", "aforo-rules.test.yaml"],
                 ["check", "config", "prometheus.yml"]):
        result = subprocess.run([promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_cover_what_an_operator_must_know():
    rules = {r["alert"]: r for g in yaml.safe_load((PROMETHEUS / "aforo-rules.yaml").read_text())["groups"]
             for r in g["rules"]}
    wanted = {"AforoRawLagGrowing", "AforoHeldEventsGrowing", "AforoLedgerWriteErrors", "AforoNotReady"}
    assert wanted <= set(rules)
    for name, r in rules.items():
        assert r["labels"]["severity"] in ("warning", "critical"), name
        assert r["for"] and r["annotations"]["summary"] and r["annotations"]["description"], name


_METRIC = re.compile(r"\b((?:aforo|bytewax)_[a-z_]+)")
_SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def _exported() -> set[str]:
    """Every metric family the registry exposes (a labelled metric with no sample yet too)."""
    return {family.name for family in REGISTRY.collect()}


def _used(text: str) -> set[str]:
    used = set()
    for name in _METRIC.findall(text):
        for suffix in _SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        used.add(name)
    return used


def test_dashboard_and_rules_use_only_exported_metrics():
    dashboard = json.loads((DEPLOY / "grafana" / "aforo-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    rules = (PROMETHEUS / "aforo-rules.yaml").read_text()
    unknown = (_used("\n".join(exprs)) | _used(rules)) - _exported()
    assert not unknown, f"not exported by Aforo: {sorted(unknown)}"
    # every Aforo metric is on the dashboard
    aforo = {n for n in _exported() if n.startswith("aforo_")}
    assert aforo - _used("\n".join(exprs)) == set()


def test_kubernetes_scrape_config_maps_annotations_to_jobs():
    scrape = yaml.safe_load((PROMETHEUS / "kubernetes.yml").read_text())["scrape_configs"][0]
    targets = {r.get("target_label") for r in scrape["relabel_configs"]}
    assert {"job", "__address__", "__metrics_path__", "instance"} <= targets
    jobs = {d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/job"]
            for p in _manifests() for d in _docs(p) if d["kind"] in ("Deployment", "StatefulSet")}
    assert jobs == {"aforo-api", "aforo-metering", "aforo-monitor"}
    assert all(re.fullmatch(r"aforo-.*", j) for j in jobs)  # what AforoTargetDown selects


# --- the containers' commands, here ----------------------------------------------------------------

def _local(command: list[str], ports: dict[str, int]) -> list[str]:
    """A compose command with its ports moved to free local ones and the peers' host names to
    127.0.0.1 (the containers' network, on one machine)."""
    out, args = [], iter(command)
    for a in args:
        out.append(a)
        if a in ("--port", "--metrics-port"):
            out.append(str(ports[next(args)]))
        elif a == "--addresses":
            out.append(",".join(f"127.0.0.1:{ports[addr]}" for addr in next(args).split(",")))
    return out


def _without(command: list[str], options: tuple[str, ...]) -> list[str]:
    """The command with these options and their values left out."""
    out, args = [], iter(command)
    for a in args:
        if a in options:
            next(args)
        else:
            out.append(a)
    return out


def _wait_ready(url: str, procs: list[subprocess.Popen], timeout_s: float = 90) -> dict:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "a process exited"
        try:
            r = httpx.get(url, timeout=5)
            if r.status_code == 200:
                return r.json()
            last = r.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready: {last}")


@pytest.mark.integration
def test_container_commands_run_here(settings, tmp_path):
    """migrate, then the API, the monitoring flow and the metering processes with the commands the
    compose file gives them, in the image's environment (JSON logs): events sent to the API reach
    the ledger, every process answers /readyz and /metrics, and every log line is JSON."""
    services = _compose()["services"]
    image_env = {k: str(v) for k, v in services["api"]["environment"].items() if "${" not in str(v)}
    env = {**os.environ, **image_env, **env_of(settings), "AFORO_LOG_FORMAT": "json"}
    ports = {p: free_port() for p in ("8080", "9100", "metering-0:2101", "metering-1:2101")}
    metering = ["metering-0", "metering-1"] if _cluster_flags_supported() else ["metering-0"]
    migrated = subprocess.run([str(BIN / "aforo"), *services["migrate"]["command"]], env=env,
                              capture_output=True, text=True, timeout=120)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr

    procs: dict[str, subprocess.Popen] = {}
    metrics_ports = {}
    try:
        for name in ["api", "monitor", *metering]:
            command = services[name]["command"]
            if name.startswith("metering") and not _cluster_flags_supported():
                # until `aforo run` takes --process-id/--addresses: the same process, alone
                command = _without(command, ("--process-id", "--addresses"))
            if "--metrics-port" in command:
                ports["9100"] = metrics_ports[name] = free_port()
            own = {**env, "AFORO_RECOVERY_DIR": str(tmp_path / name / "recovery")}
            procs[name] = subprocess.Popen([str(BIN / "aforo"), *_local(command, ports)], env=own,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        api = f"http://127.0.0.1:{ports['8080']}"
        running = list(procs.values())
        _wait_ready(api + "/readyz", running)
        for name, port in metrics_ports.items():
            assert _wait_ready(f"http://127.0.0.1:{port}/readyz", running)["status"] == "ready", name

        created = CliRunner().invoke(main, ["keys", "create", "--tenant", "acme"], env=env_of(settings))
        key = re.search(r"key:\s+(afk_\S+)", created.output).group(1)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        batch = [{"specversion": "1.0", "id": f"img-{uuid.uuid4().hex}", "source": "deploy-test",
                  "type": "api.call", "subject": "cust-1", "time": now,
                  "data": {"route": "/x", "status": 200}} for _ in range(25)]
        r = httpx.post(api + "/v1/events", content=orjson.dumps(batch), timeout=30,
                       headers={"Authorization": f"Bearer {key}",
                                "Content-Type": "application/cloudevents-batch+json"})
        assert r.status_code == 202, r.text

        deadline = time.monotonic() + 120
        while True:
            with connect(settings.database_url) as conn:
                rows = conn.execute("SELECT count(*) FROM ledger WHERE source = 'deploy-test'").fetchone()[0]
            if rows == 25:
                break
            assert time.monotonic() < deadline, f"{rows} of 25 events in the ledger"
            assert all(p.poll() is None for p in running), "a process exited"
            time.sleep(1)
        scraped = {n: httpx.get(f"http://127.0.0.1:{p}/metrics", timeout=10).text
                   for n, p in metrics_ports.items()}
        scraped["api"] = httpx.get(api + "/metrics", timeout=10).text
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        logs = {}
        for name, p in procs.items():
            try:
                _, logs[name] = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                _, logs[name] = p.communicate()

    families = {n: {f.name for f in text_string_to_metric_families(t)} for n, t in scraped.items()}
    assert "aforo_raw_lag_records" in families["metering-0"] and "aforo_held_events" in families["metering-0"]
    assert "aforo_ready" in families["monitor"]
    assert "aforo_http_requests" in families["api"]
    lines = {name: [orjson.loads(line) for line in text.splitlines() if line.strip()]  # JSON, or it raises
             for name, text in logs.items()}
    assert any(x.get("logger") == "aforo.api.access" and x.get("route") == "/v1/events"
               and x.get("status") == 202 for x in lines["api"])
    assert any("metrics, health and readiness" in x["message"] for x in lines["monitor"])
