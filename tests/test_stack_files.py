"""Offline checks of the observability stack files (docker-compose.yml and
collector-config/*.yaml).

Needs only PyYAML; the docker-compose check needs the `docker-compose`
binary (Debian: `apt-get install docker-compose`) but no Docker engine.
Runs on its own: `pytest tests/test_stack_files.py -p no:taskctl`.
"""

import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed: pip install pyyaml")

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
COLLECTOR_FILE = REPO / "collector-config" / "otel-collector.yaml"
TEMPO_FILE = REPO / "collector-config" / "tempo.yaml"
GRAFANA_DS_FILE = REPO / "collector-config" / "grafana-datasources.yaml"

# Bind-mount sources that are created at run time, not shipped in the repo:
# ./logs holds logs/<run_id>/{pytest.log,traces.jsonl} written by pytest runs.
RUNTIME_DIRS = {"./logs"}

COMPONENT_KINDS = ("receivers", "processors", "exporters")
PIPELINE_TYPES = {"traces", "metrics", "logs"}


def load(path):
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    assert isinstance(data, dict), f"{path.name}: top level is not a mapping"
    return data


def pipeline_problems(config):
    """Return a list of human-readable problems in a Collector config dict.

    Every pipeline may only reference receivers/processors/exporters that
    are defined at top level, must have receivers and exporters, and every
    defined receiver/processor/exporter must be used by some pipeline (an
    unused one is silently not started by the Collector).
    """
    problems = []
    service = config.get("service") or {}
    pipelines = service.get("pipelines") or {}
    if not pipelines:
        problems.append("service.pipelines is empty or missing")

    used = {kind: set() for kind in COMPONENT_KINDS}
    for name, pipeline in pipelines.items():
        pipeline = pipeline or {}
        ptype = str(name).split("/", 1)[0]
        if ptype not in PIPELINE_TYPES:
            problems.append(
                f"pipeline {name!r}: unknown type {ptype!r} "
                f"(expected one of {sorted(PIPELINE_TYPES)})"
            )
        for kind in COMPONENT_KINDS:
            defined = config.get(kind) or {}
            refs = pipeline.get(kind) or []
            if kind != "processors" and not refs:
                problems.append(f"pipeline {name!r} has no {kind}")
            for ref in refs:
                used[kind].add(ref)
                if ref not in defined:
                    problems.append(f"pipeline {name!r} references undefined {kind[:-1]} {ref!r}")

    for kind in COMPONENT_KINDS:
        for comp in config.get(kind) or {}:
            if comp not in used[kind]:
                problems.append(f"{kind[:-1]} {comp!r} is defined but used by no pipeline")

    defined_ext = config.get("extensions") or {}
    for ext in service.get("extensions") or []:
        if ext not in defined_ext:
            problems.append(f"service.extensions references undefined extension {ext!r}")
    return problems


def split_volume(spec):
    """(source, target) of a compose volume entry, short or long syntax."""
    if isinstance(spec, dict):
        return spec.get("source"), spec.get("target")
    parts = str(spec).split(":")
    if len(parts) == 1:  # anonymous volume: just a container path
        return None, parts[0]
    return parts[0], parts[1]


def image_is_pinned(image):
    if "@sha256:" in image:
        return True
    name, sep, tag = image.rpartition(":")
    # a ':' before the last '/' belongs to a registry host:port, not a tag
    if not sep or "/" in tag:
        return False
    return bool(tag) and tag != "latest"


# --------------------------------------------------------------- collector


def test_collector_config_pipelines_are_consistent():
    config = load(COLLECTOR_FILE)
    assert pipeline_problems(config) == []


def test_collector_traces_pipeline_has_live_and_replay_receivers():
    config = load(COLLECTOR_FILE)
    traces = config["service"]["pipelines"]["traces"]
    assert "otlp" in traces["receivers"]
    assert "otlpjsonfile" in traces["receivers"]
    assert {"otlp/jaeger", "otlp/tempo"} <= set(traces["exporters"])

    otlp = config["receivers"]["otlp"]["protocols"]
    assert otlp["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert otlp["http"]["endpoint"] == "0.0.0.0:4318"

    replay = config["receivers"]["otlpjsonfile"]
    assert replay["include"] == ["/logs/*/traces.jsonl"]
    assert replay["start_at"] == "beginning"


def test_pipeline_check_reports_undefined_and_unused_components():
    broken = {
        "receivers": {"otlp": {}},
        "processors": {"batch": {}},
        "exporters": {"debug": {}, "otlp/tempo": {}},
        "service": {
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["batch"],
                    "exporters": ["otlp/jaeger"],  # not defined
                }
            }
        },
    }
    problems = pipeline_problems(broken)
    assert any("undefined exporter 'otlp/jaeger'" in p for p in problems), problems
    assert any("exporter 'debug' is defined but used by no pipeline" in p for p in problems)
    assert any("exporter 'otlp/tempo' is defined but used by no pipeline" in p for p in problems)
    assert len(problems) == 3, problems


def test_pipeline_check_reports_missing_pipelines():
    assert pipeline_problems({"receivers": {"otlp": {}}}) == [
        "service.pipelines is empty or missing",
        "receiver 'otlp' is defined but used by no pipeline",
    ]


# ----------------------------------------------------------------- compose


def test_compose_images_are_pinned():
    compose = load(COMPOSE_FILE)
    services = compose["services"]
    assert set(services) == {"etcd", "otel-collector", "jaeger", "tempo", "grafana"}
    unpinned = {
        name: svc.get("image")
        for name, svc in services.items()
        if not image_is_pinned(str(svc.get("image", "")))
    }
    assert unpinned == {}, f"images without a fixed tag: {unpinned}"


def test_image_pin_check_rejects_latest_and_untagged():
    assert image_is_pinned("grafana/tempo:2.6.1")
    assert image_is_pinned("quay.io/coreos/etcd:v3.5.17")
    assert image_is_pinned("busybox@sha256:" + "0" * 64)
    assert not image_is_pinned("grafana/tempo")
    assert not image_is_pinned("grafana/tempo:latest")
    assert not image_is_pinned("localhost:5000/tempo")


def test_compose_bind_mount_sources_exist():
    compose = load(COMPOSE_FILE)
    missing = []
    for name, svc in compose["services"].items():
        for spec in svc.get("volumes") or []:
            source, _ = split_volume(spec)
            if not source or not source.startswith("./") or source in RUNTIME_DIRS:
                continue
            if not (REPO / source).is_file():
                # a missing file would be mounted as an empty directory
                missing.append(f"{name}: {source}")
    assert missing == [], f"bind-mount sources missing from the repo: {missing}"


def test_compose_wires_collector_config_and_logs():
    compose = load(COMPOSE_FILE)
    collector = compose["services"]["otel-collector"]
    mounts = dict(split_volume(v) for v in collector["volumes"])
    command = collector["command"]
    command = " ".join(command) if isinstance(command, list) else command
    assert "--config=/etc/otelcol/config.yaml" in command
    assert mounts["./collector-config/otel-collector.yaml"] == "/etc/otelcol/config.yaml"
    assert mounts["./logs"] == "/logs"
    assert any(str(v).startswith("./logs:/logs:ro") for v in collector["volumes"])

    # the otlpjsonfile glob must look inside the mounted ./logs
    for pattern in load(COLLECTOR_FILE)["receivers"]["otlpjsonfile"]["include"]:
        assert pattern.startswith("/logs/"), pattern

    ports = {str(p) for p in collector["ports"]}
    assert {"4317:4317", "4318:4318"} <= ports


def test_exporter_and_datasource_hosts_are_compose_services():
    services = set(load(COMPOSE_FILE)["services"])
    for name, exporter in load(COLLECTOR_FILE)["exporters"].items():
        endpoint = (exporter or {}).get("endpoint")
        if endpoint:
            host = urlsplit(endpoint if "//" in endpoint else "//" + endpoint).hostname
            assert host in services, f"exporter {name}: unknown host {host!r}"

    datasources = load(GRAFANA_DS_FILE)["datasources"]
    for ds in datasources:
        assert urlsplit(ds["url"]).hostname in services, ds
    defaults = [ds["name"] for ds in datasources if ds.get("isDefault")]
    assert defaults == ["Tempo"]
    urls = {ds["type"]: ds["url"] for ds in datasources}
    assert urls == {"tempo": "http://tempo:3200", "jaeger": "http://jaeger:16686"}


def test_tempo_config_receives_otlp_grpc_and_stores_locally():
    tempo = load(TEMPO_FILE)
    grpc = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]
    assert grpc["endpoint"] == "0.0.0.0:4317"
    assert tempo["server"]["http_listen_port"] == 3200
    assert tempo["storage"]["trace"]["backend"] == "local"


def test_docker_compose_config_is_valid():
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip(
            "docker-compose not on PATH; install it to validate docker-compose.yml "
            "offline (Debian/Ubuntu: apt-get install docker-compose)"
        )
    proc = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (
        f"docker-compose config failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )
