"""Offline checks of the observability stack files (docker-compose.yml and
collector-config/*.yaml): pinned images, ports on 127.0.0.1, every
Collector pipeline reference, every Grafana data source link.

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
LGTM_COMPOSE_FILE = REPO / "docker-compose.lgtm.yml"  # one container, for laptops
COLLECTOR_FILE = REPO / "collector-config" / "otel-collector.yaml"
TEMPO_FILE = REPO / "collector-config" / "tempo.yaml"
GRAFANA_DS_FILE = REPO / "collector-config" / "grafana-datasources.yaml"
LOKI_FILE = REPO / "collector-config" / "loki.yaml"
STACK_DOC = REPO / "docs" / "stack.md"

# Bind-mount sources that are created at run time, not shipped in the repo:
# ./logs holds logs/<run_id>/{pytest.log,traces.jsonl} written by pytest runs.
RUNTIME_DIRS = {"./logs"}

COMPONENT_KINDS = ("receivers", "processors", "exporters")
PIPELINE_TYPES = {"traces", "metrics", "logs"}
# Collector 0.144 renamed these exporters; the old names are deprecated aliases.
DEPRECATED_EXPORTER_TYPES = {"otlp": "otlp_grpc", "otlphttp": "otlp_http"}


def load(path):
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    assert isinstance(data, dict), f"{path.name}: top level is not a mapping"
    return data


def component_type(name):
    """`otlp_grpc/tempo` -> `otlp_grpc`: a component id is type[/name]."""
    return str(name).split("/", 1)[0]


def find_storage_refs(node, path=()):
    """(path, value) of every `storage:` setting inside a component's config."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "storage" and isinstance(value, str):
                yield path + (key,), value
            else:
                yield from find_storage_refs(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from find_storage_refs(value, path + (i,))


def pipeline_problems(config):
    """Return a list of human-readable problems in a Collector config dict.

    Every pipeline may only reference receivers/processors/exporters (and
    connectors, which sit as exporter of one pipeline and receiver of
    another) that are defined at top level, must have receivers and
    exporters, and every defined component must be used by some pipeline (an
    unused one is silently not started by the Collector). A connector must be
    used on both sides. Every extension must be defined and listed in
    service.extensions, and a component's `storage:` must name such an
    extension.
    """
    problems = []
    service = config.get("service") or {}
    pipelines = service.get("pipelines") or {}
    connectors = config.get("connectors") or {}
    if not pipelines:
        problems.append("service.pipelines is empty or missing")

    used = {kind: set() for kind in COMPONENT_KINDS}
    connector_sides = {name: set() for name in connectors}
    for name, pipeline in pipelines.items():
        pipeline = pipeline or {}
        ptype = component_type(name)
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
                if kind != "processors" and ref in connectors:
                    connector_sides[ref].add(kind)
                    continue
                used[kind].add(ref)
                if ref not in defined:
                    problems.append(f"pipeline {name!r} references undefined {kind[:-1]} {ref!r}")

    for kind in COMPONENT_KINDS:
        for comp in config.get(kind) or {}:
            if comp not in used[kind]:
                problems.append(f"{kind[:-1]} {comp!r} is defined but used by no pipeline")
    for name, sides in connector_sides.items():
        for side in ("exporters", "receivers"):
            if side not in sides:
                problems.append(f"connector {name!r} is used as no pipeline's {side[:-1]}")

    defined_ext = config.get("extensions") or {}
    enabled_ext = list(service.get("extensions") or [])
    for ext in enabled_ext:
        if ext not in defined_ext:
            problems.append(f"service.extensions references undefined extension {ext!r}")
    for ext in defined_ext:
        if ext not in enabled_ext:
            problems.append(f"extension {ext!r} is defined but not in service.extensions")

    for kind in COMPONENT_KINDS + ("connectors",):
        for comp, comp_cfg in (config.get(kind) or {}).items():
            for path, ref in find_storage_refs(comp_cfg or {}):
                if ref not in defined_ext or ref not in enabled_ext:
                    where = ".".join(str(p) for p in path)
                    problems.append(
                        f"{kind[:-1]} {comp!r}: {where} names extension {ref!r}, "
                        "which is not defined and enabled"
                    )
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


def image_tag(image):
    """`grafana/tempo:3.0.3` -> `3.0.3` (a digest suffix is dropped)."""
    image = image.split("@", 1)[0]
    name, sep, tag = image.rpartition(":")
    return tag if sep and "/" not in tag else ""


def version_tuple(tag):
    """`v3.5.33` / `0.159.0` -> (3, 5, 33) / (0, 159, 0)."""
    return tuple(int(part) for part in tag.lstrip("v").split("-", 1)[0].split("."))


def port_problems(compose):
    """Published ports that are not bound to 127.0.0.1 (short or long syntax)."""
    problems = []
    for name, svc in (compose.get("services") or {}).items():
        for spec in svc.get("ports") or []:
            if isinstance(spec, dict):
                if spec.get("published") is not None and spec.get("host_ip") != "127.0.0.1":
                    problems.append(f"{name}: {spec}")
                continue
            parts = str(spec).split(":")
            # "127.0.0.1:4317:4317" is the only accepted short form; "4317:4317"
            # and "4317" publish on every interface.
            if len(parts) != 3 or parts[0] != "127.0.0.1":
                problems.append(f"{name}: {spec}")
    return problems


def iter_datasource_uid_refs(node, path=()):
    """(path, uid) of every `datasourceUid` inside a data source's jsonData."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasourceUid":
                yield path + (key,), value
            else:
                yield from iter_datasource_uid_refs(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from iter_datasource_uid_refs(value, path + (i,))


def datasource_link_problems(datasources):
    """Links between Grafana data sources whose target uid does not exist,
    plus data sources without a uid or with a duplicate one."""
    problems = []
    uids = [ds.get("uid") for ds in datasources]
    for ds, uid in zip(datasources, uids, strict=True):
        if not uid:
            problems.append(f"data source {ds.get('name')!r} has no uid")
    for uid in {u for u in uids if u and uids.count(u) > 1}:
        problems.append(f"uid {uid!r} is used by more than one data source")
    for ds in datasources:
        for path, ref in iter_datasource_uid_refs(ds.get("jsonData") or {}):
            if ref not in uids:
                where = ".".join(str(p) for p in path)
                problems.append(f"{ds.get('name')}: jsonData.{where} -> unknown uid {ref!r}")
    return problems


def datasources_by_uid():
    return {ds["uid"]: ds for ds in load(GRAFANA_DS_FILE)["datasources"]}


# --------------------------------------------------------------- collector


def test_collector_config_pipelines_are_consistent():
    config = load(COLLECTOR_FILE)
    assert pipeline_problems(config) == []


def test_collector_traces_pipeline_has_live_and_replay_receivers():
    config = load(COLLECTOR_FILE)
    traces = config["service"]["pipelines"]["traces"]
    assert "otlp" in traces["receivers"]
    assert "otlpjsonfile" in traces["receivers"]
    assert {"otlp_grpc/jaeger", "otlp_grpc/tempo"} <= set(traces["exporters"])

    otlp = config["receivers"]["otlp"]["protocols"]
    assert otlp["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert otlp["http"]["endpoint"] == "0.0.0.0:4318"

    replay = config["receivers"]["otlpjsonfile"]
    assert replay["include"] == ["/logs/*/traces.jsonl"]
    assert replay["start_at"] == "beginning"


def test_collector_logs_go_to_loki_over_otlp_http():
    config = load(COLLECTOR_FILE)
    logs = config["service"]["pipelines"]["logs"]
    assert logs["receivers"] == ["otlp"]
    loki = [e for e in logs["exporters"] if component_type(e) == "otlp_http"]
    assert len(loki) == 1, logs["exporters"]
    assert config["exporters"][loki[0]]["endpoint"] == "http://loki:3100/otlp"
    # the debug exporter at basic verbosity prints counts, not records
    assert not any(component_type(e) == "debug" for e in logs["exporters"])


def test_collector_exporter_names_match_the_pinned_version():
    compose = load(COMPOSE_FILE)
    image = compose["services"]["otel-collector"]["image"]
    assert image.startswith("otel/opentelemetry-collector-contrib:"), image
    version = version_tuple(image_tag(image))
    config = load(COLLECTOR_FILE)
    types = {component_type(e) for e in config.get("exporters") or {}}
    if version >= (0, 144, 0):
        deprecated = sorted(types & set(DEPRECATED_EXPORTER_TYPES))
        assert deprecated == [], (
            f"collector {version} renamed {deprecated} to "
            f"{[DEPRECATED_EXPORTER_TYPES[t] for t in deprecated]}"
        )
    else:
        assert not types & set(DEPRECATED_EXPORTER_TYPES.values()), (
            f"collector {version} predates otlp_grpc/otlp_http"
        )


def test_replay_receiver_keeps_its_position_in_a_volume():
    config = load(COLLECTOR_FILE)
    storage = config["receivers"]["otlpjsonfile"].get("storage")
    assert storage, "otlpjsonfile needs `storage:` or a restart re-sends every run"
    assert component_type(storage) == "file_storage"
    assert storage in config["service"]["extensions"]
    directory = config["extensions"][storage]["directory"]

    compose = load(COMPOSE_FILE)
    named_volumes = set(compose.get("volumes") or {})
    collector_mounts = dict(
        (target, source)
        for source, target in map(split_volume, compose["services"]["otel-collector"]["volumes"])
    )
    source = collector_mounts.get(directory)
    assert source in named_volumes, (
        f"{directory} must be a named volume in the collector, got {source!r}"
    )
    # the collector runs as uid 10001 in a scratch image: something must hand
    # the fresh (root-owned) volume to that user before it starts
    init = compose["services"]["otelcol-storage-init"]
    assert dict((t, s) for s, t in map(split_volume, init["volumes"])).get(directory) == source
    assert init["command"][:3] == ["chown", "-R", "10001:10001"]
    assert directory in init["command"]
    depends = compose["services"]["otel-collector"]["depends_on"]
    assert depends["otelcol-storage-init"]["condition"] == "service_completed_successfully"


def test_pipeline_check_reports_undefined_and_unused_components():
    broken = {
        "receivers": {"otlp": {}},
        "processors": {"batch": {}},
        "exporters": {"debug": {}, "otlp_grpc/tempo": {}},
        "service": {
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["batch"],
                    "exporters": ["otlp_grpc/jaeger"],  # not defined
                }
            }
        },
    }
    problems = pipeline_problems(broken)
    assert any("undefined exporter 'otlp_grpc/jaeger'" in p for p in problems), problems
    assert any("exporter 'debug' is defined but used by no pipeline" in p for p in problems)
    assert any(
        "exporter 'otlp_grpc/tempo' is defined but used by no pipeline" in p for p in problems
    )
    assert len(problems) == 3, problems


def test_pipeline_check_reports_missing_pipelines():
    assert pipeline_problems({"receivers": {"otlp": {}}}) == [
        "service.pipelines is empty or missing",
        "receiver 'otlp' is defined but used by no pipeline",
    ]


def test_pipeline_check_follows_connectors_and_extensions():
    good = {
        "extensions": {"file_storage/replay": {"directory": "/x"}},
        "receivers": {"otlp": {}, "otlpjsonfile": {"storage": "file_storage/replay"}},
        "connectors": {"spanmetrics": {}},
        "exporters": {"otlp_grpc/tempo": {}, "otlp_http/prometheus": {}},
        "service": {
            "extensions": ["file_storage/replay"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp", "otlpjsonfile"],
                    "exporters": ["otlp_grpc/tempo", "spanmetrics"],
                },
                "metrics": {"receivers": ["spanmetrics"], "exporters": ["otlp_http/prometheus"]},
            },
        },
    }
    assert pipeline_problems(good) == []

    one_sided = {
        **good,
        "service": {
            **good["service"],
            "pipelines": {
                "traces": good["service"]["pipelines"]["traces"],
                "metrics/other": {"receivers": ["otlp"], "exporters": ["otlp_http/prometheus"]},
            },
        },
    }
    assert pipeline_problems(one_sided) == [
        "connector 'spanmetrics' is used as no pipeline's receiver"
    ]

    no_ext = {**good, "service": {**good["service"], "extensions": []}}
    problems = pipeline_problems(no_ext)
    assert "extension 'file_storage/replay' is defined but not in service.extensions" in problems
    assert any("otlpjsonfile" in p and "storage" in p for p in problems), problems
    assert len(problems) == 2, problems

    wrong_ext = {**good, "service": {**good["service"], "extensions": ["file_storage"]}}
    problems = pipeline_problems(wrong_ext)
    assert "service.extensions references undefined extension 'file_storage'" in problems


# ----------------------------------------------------------------- compose

SERVICES = {"etcd", "otelcol-storage-init", "otel-collector", "jaeger", "tempo", "loki", "grafana"}


def test_compose_images_are_pinned():
    compose = load(COMPOSE_FILE)
    services = compose["services"]
    assert set(services) == SERVICES
    unpinned = {
        name: svc.get("image")
        for name, svc in services.items()
        if not image_is_pinned(str(svc.get("image", "")))
    }
    assert unpinned == {}, f"images without a fixed tag: {unpinned}"


def test_image_pin_check_rejects_latest_and_untagged():
    assert image_is_pinned("grafana/tempo:3.0.3")
    assert image_is_pinned("quay.io/coreos/etcd:v3.5.33")
    assert image_is_pinned("busybox@sha256:" + "0" * 64)
    assert not image_is_pinned("grafana/tempo")
    assert not image_is_pinned("grafana/tempo:latest")
    assert not image_is_pinned("localhost:5000/tempo")


def test_compose_uses_current_major_versions():
    images = {name: svc["image"] for name, svc in load(COMPOSE_FILE)["services"].items()}
    # Jaeger v2; the v1 all-in-one reached end of life on 2025-12-31
    assert images["jaeger"].startswith("jaegertracing/jaeger:"), images["jaeger"]
    assert version_tuple(image_tag(images["jaeger"]))[0] == 2
    # the plugin is tested against etcd 3.5
    assert images["etcd"].startswith("quay.io/coreos/etcd:v3.5."), images["etcd"]
    assert version_tuple(image_tag(images["loki"]))[0] == 3
    assert version_tuple(image_tag(images["tempo"]))[0] in (2, 3)
    assert version_tuple(image_tag(images["otel-collector"])) >= (0, 144, 0)


def test_jaeger_v2_needs_no_v1_environment():
    jaeger = load(COMPOSE_FILE)["services"]["jaeger"]
    env = jaeger.get("environment") or {}
    names = set(env) if isinstance(env, dict) else {str(e).split("=", 1)[0] for e in env}
    # v1 switches that v2 ignores (configuration is a Collector-style YAML)
    assert not names & {"COLLECTOR_OTLP_ENABLED", "SPAN_STORAGE_TYPE"}, names


def test_compose_ports_are_bound_to_localhost():
    compose = load(COMPOSE_FILE)
    assert port_problems(compose) == []
    published = {
        str(spec).rsplit(":", 1)[-1]
        for svc in compose["services"].values()
        for spec in svc.get("ports") or []
    }
    assert {"2379", "4317", "4318", "16686", "3200", "3100", "3000"} <= published


def test_port_check_rejects_ports_open_to_every_interface():
    compose = {
        "services": {
            "a": {"ports": ["4317:4317", "127.0.0.1:4318:4318", 9000, "0.0.0.0:1:1"]},
            "b": {
                "ports": [
                    {"target": 3000, "published": 3000},
                    {"target": 3100, "published": 3100, "host_ip": "127.0.0.1"},
                ]
            },
        }
    }
    assert port_problems(compose) == [
        "a: 4317:4317",
        "a: 9000",
        "a: 0.0.0.0:1:1",
        "b: {'target': 3000, 'published': 3000}",
    ]


def test_compose_has_no_obsolete_version_key():
    compose = load(COMPOSE_FILE)
    assert "version" not in compose, "the top-level `version:` key is obsolete in Compose"


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


def test_compose_named_volumes_are_declared():
    compose = load(COMPOSE_FILE)
    declared = set(compose.get("volumes") or {})
    used = set()
    for svc in compose["services"].values():
        for spec in svc.get("volumes") or []:
            source, _ = split_volume(spec)
            if source and not source.startswith(("./", "/", "~")):
                used.add(source)
    assert used == declared


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
    assert {"127.0.0.1:4317:4317", "127.0.0.1:4318:4318"} <= ports


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
    assert urls == {
        "tempo": "http://tempo:3200",
        "loki": "http://loki:3100",
        "jaeger": "http://jaeger:16686",
    }


# ------------------------------------------------------- tempo, loki, grafana


def test_tempo_config_receives_otlp_grpc_and_stores_locally():
    tempo = load(TEMPO_FILE)
    grpc = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]
    assert grpc["endpoint"] == "0.0.0.0:4317"
    assert tempo["server"]["http_listen_port"] == 3200
    assert tempo["storage"]["trace"]["backend"] == "local"


def test_tempo_config_fits_the_pinned_major_version():
    image = load(COMPOSE_FILE)["services"]["tempo"]["image"]
    tempo = load(TEMPO_FILE)
    if version_tuple(image_tag(image))[0] >= 3:
        # Tempo 3 refuses these 2.x sections at start-up
        assert not {"ingester", "compactor"} & set(tempo), sorted(tempo)
        assert tempo["backend_worker"]["compaction"]["block_retention"]


def test_loki_config_accepts_otlp():
    loki = load(LOKI_FILE)
    assert loki["server"]["http_listen_port"] == 3100
    assert loki["auth_enabled"] is False  # single tenant: no X-Scope-OrgID needed
    # OTLP attributes and trace ids land in structured metadata
    assert loki["limits_config"]["allow_structured_metadata"] is True
    assert all(
        c["schema"] == "v13" and c["store"] == "tsdb" for c in loki["schema_config"]["configs"]
    )
    assert loki["common"]["path_prefix"] == "/loki"
    mounts = {t: s for s, t in map(split_volume, load(COMPOSE_FILE)["services"]["loki"]["volumes"])}
    assert "/loki" in mounts


def test_grafana_datasource_links_point_to_existing_uids():
    datasources = load(GRAFANA_DS_FILE)["datasources"]
    assert datasource_link_problems(datasources) == []
    # and there are links to check
    assert len(list(iter_datasource_uid_refs([ds.get("jsonData") for ds in datasources]))) >= 3


def test_datasource_link_check_reports_unknown_and_duplicate_uids():
    datasources = [
        {
            "name": "Tempo",
            "uid": "tempo",
            "jsonData": {"tracesToLogsV2": {"datasourceUid": "logs"}},
        },
        {
            "name": "Loki",
            "uid": "loki",
            "jsonData": {"derivedFields": [{"datasourceUid": "tempo"}, {"datasourceUid": "tmpo"}]},
        },
        {"name": "Other", "uid": "loki"},
        {"name": "NoUid"},
    ]
    assert sorted(datasource_link_problems(datasources)) == sorted(
        [
            "data source 'NoUid' has no uid",
            "uid 'loki' is used by more than one data source",
            "Tempo: jsonData.tracesToLogsV2.datasourceUid -> unknown uid 'logs'",
            "Loki: jsonData.derivedFields.1.datasourceUid -> unknown uid 'tmpo'",
        ]
    )


def test_grafana_links_traces_to_logs_by_trace_id():
    by_uid = datasources_by_uid()
    for uid in ("tempo", "jaeger"):
        link = by_uid[uid]["jsonData"]["tracesToLogsV2"]
        assert by_uid[link["datasourceUid"]]["type"] == "loki"
        # the query filters on Loki's `trace_id` structured metadata; `$$`
        # keeps Grafana's provisioning from expanding it as an env variable
        if link.get("customQuery"):
            assert 'trace_id = "$${__trace.traceId}"' in link["query"], link["query"]
        else:
            assert link.get("filterByTraceID") is True, link


def test_grafana_links_logs_to_traces_by_trace_id():
    by_uid = datasources_by_uid()
    fields = by_uid["loki"]["jsonData"]["derivedFields"]
    to_tempo = [f for f in fields if by_uid.get(f.get("datasourceUid"), {}).get("type") == "tempo"]
    assert to_tempo, fields
    field = to_tempo[0]
    # Loki's OTLP endpoint stores the record's trace id as structured
    # metadata `trace_id`; a `label` matcher reads it from there
    assert field["matcherType"] == "label"
    assert field["matcherRegex"] == "trace_id"
    assert field["url"] == "$${__value.raw}"


def test_stack_doc_gives_a_bounded_tempo_search():
    doc = STACK_DOC.read_text(encoding="utf-8")
    commands = doc.replace("\\\n", " ").splitlines()  # join shell continuation lines
    searches = [line for line in commands if "/api/search" in line and "curl" in line]
    assert searches, "docs/stack.md should show a Tempo search with curl"
    assert any(all(p in line for p in ("start=", "end=", "limit=")) for line in searches), searches
    assert "docker-compose.yml" in doc and "127.0.0.1" in doc


def test_lgtm_compose_file_is_pinned_local_and_has_etcd():
    compose = load(LGTM_COMPOSE_FILE)
    assert "version" not in compose
    assert port_problems(compose) == []
    services = compose["services"]
    assert set(services) == {"etcd", "otel-lgtm"}
    assert all(image_is_pinned(svc["image"]) for svc in services.values()), services
    assert services["otel-lgtm"]["image"].startswith("grafana/otel-lgtm:")
    # the same etcd as the full stack
    assert services["etcd"]["image"] == load(COMPOSE_FILE)["services"]["etcd"]["image"]
    published = {str(spec) for svc in services.values() for spec in svc["ports"]}
    assert {
        "127.0.0.1:4317:4317",
        "127.0.0.1:4318:4318",
        "127.0.0.1:3000:3000",
        "127.0.0.1:2379:2379",
    } <= published


@pytest.mark.parametrize("compose_file", [COMPOSE_FILE, LGTM_COMPOSE_FILE], ids=lambda p: p.name)
def test_docker_compose_config_is_valid(compose_file):
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip(
            "docker-compose not on PATH; install it to validate the compose files "
            "offline (Debian/Ubuntu: apt-get install docker-compose)"
        )
    proc = subprocess.run(
        [binary, "-f", str(compose_file), "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (
        f"docker-compose config failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )
