"""Where a test's CPU time goes, thread by thread: the plugin against pytest-otel.

    .venv/bin/python benchmarks/cpu_by_thread.py [--tests 2000] [--runs 5] [--no-peers]

``overhead.py`` gives one CPU figure per run (all threads, and the span
process once it is reaped); ``instructions.py`` counts instructions, which
are not time. This script measures CPU time *inside the tests' loop*: a
probe plugin reads ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds on the
CPU, per thread) for pytest's process and its child processes when the
``--skip``-th test starts and when the last test ends, and divides by the
tests in between. Start-up, collection and the end of the session are
outside the window, so no 1-test run is needed to subtract them.

Variants, interleaved, median of R runs (µs a test):

* ``bare``: ``-p no:taskctl``;
* ``taskctl + OTLP``: a private etcd, OTLP/gRPC to a receiver in this process;
* ``taskctl + OTLP, detail test``: one span per test (``--taskctl-span-detail test``);
* with the peers (the venv of ``overhead.py``): that venv's bare pytest and
  ``pytest-otel + OTLP`` (one span per test, the SDK's batch processor).

Columns: pytest's main thread (where the tests run), each of the plugin's
threads by name, the span process (all its threads), and the total, each
also as the difference to its own venv's bare pytest. Linux only.
"""

from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # before any import that could write __pycache__ here

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from _common import (  # noqa: E402
    Receiver,
    clean_env,
    code_version,
    machine_line,
    markdown_table,
    median,
    remove_tree,
    report_end,
)
from overhead import (  # noqa: E402
    PEER_PLUGINS,
    Variant,
    ensure_peer_venv,
    peer_env,
    write_suite,
)

from pytest_taskctl.etcd.server import EmbeddedEtcd, free_port  # noqa: E402

#: A thread gets a column of its own from this many µs a test (median) in some variant.
MIN_COLUMN = 2.0
#: The probe, loaded into every variant's pytest with ``-p taskctl_cpu_probe``.
PROBE = """
import json, os, threading
import pytest

SKIP = int(os.environ["CPU_PROBE_SKIP"])
_state = {"seen": 0, "start": None}


def _tasks(pid):
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[tid] = int(f.read().split()[0])
        except OSError:
            pass
    return out


def _children(pid):
    kids = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += f.read().split()
        except OSError:
            pass
    return kids


def _snapshot():
    me = os.getpid()
    return {"self": _tasks(me), "children": {kid: _tasks(kid) for kid in _children(me)}}


@pytest.hookimpl(trylast=True)
def pytest_runtest_logstart(nodeid, location):
    _state["seen"] += 1
    if _state["seen"] == SKIP + 1:
        _state["start"] = _snapshot()


@pytest.hookimpl(trylast=True)
def pytest_runtest_logfinish(nodeid, location):
    if _state["start"] is None or _state["seen"] != _state["total"]:
        return
    end, start = _snapshot(), _state["start"]
    tests = _state["seen"] - SKIP
    names = {str(t.native_id): t.name.split(" ")[0] for t in threading.enumerate()}
    main = str(os.getpid())
    out = {}
    for tid, ns in end["self"].items():
        name = "main thread" if tid == main else names.get(tid, "threads outside Python")
        out[name] = out.get(name, 0.0) + (ns - start["self"].get(tid, 0)) / 1e3 / tests
    helper = 0.0
    for kid, tasks in end["children"].items():
        before = start["children"].get(kid, {})
        helper += sum(ns - before.get(tid, 0) for tid, ns in tasks.items()) / 1e3 / tests
    if helper:
        out["span process"] = helper
    with open(os.environ["CPU_PROBE_OUT"], "w") as f:
        json.dump(out, f)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    _state["total"] = len(session.items)
"""


#: Each variant's runs: per run, µs a test by column (thread name, "span process").
Samples = dict[str, list[dict[str, float]]]


def run_once(variant: Variant, suite: Path, out: Path, tests: int, samples: Samples) -> None:
    out.unlink(missing_ok=True)
    env = {**variant.env, "CPU_PROBE_OUT": str(out)}
    env["PYTHONPATH"] = str(suite / "probe")  # the probe only: peers must not see the plugin
    command = [variant.python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*command, "-p", "taskctl_cpu_probe", *variant.args],
        cwd=suite,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0 or f"{tests} passed" not in done.stdout or not out.exists():
        tail = " / ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        variant.failures.append(f"exit {done.returncode}: {tail!r}")
        return
    samples.setdefault(variant.name, []).append(json.loads(out.read_text()))


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    """The median of each column over the runs (a column a run lacks counts as 0)."""
    columns = {name for sample in runs for name in sample}
    medians = {name: median([sample.get(name, 0.0) for sample in runs]) for name in columns}
    medians["total"] = median([sum(sample.values()) for sample in runs])
    return medians


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=2000, help="trivial tests (2000)")
    parser.add_argument("--runs", type=int, default=5, help="runs per variant (5)")
    parser.add_argument("--skip", type=int, default=100, help="tests before the window (100)")
    parser.add_argument("--no-peers", action="store_true", help="without pytest-otel")
    options = parser.parse_args()
    if options.skip >= options.tests:
        parser.error("--skip must be below --tests")

    tmp = Path(tempfile.mkdtemp(prefix="taskctl-bench-cpu-"))
    suite = tmp / "suite"
    write_suite(suite, options.tests)
    (suite / "probe").mkdir()
    (suite / "probe" / "taskctl_cpu_probe.py").write_text(PROBE)
    etcd = EmbeddedEtcd(tmp / "etcd" / "data", port=free_port())
    receiver: Receiver | None = None
    started = time.monotonic()
    samples: Samples = {}
    try:
        etcd.start()
        receiver = Receiver()
        base = clean_env(tmp / "pycache", CPU_PROBE_SKIP=str(options.skip))
        otlp = {**base, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
        me = sys.executable
        up = ["--taskctl-etcd", etcd.endpoint]
        variants = [
            Variant("bare", me, ["-p", "no:taskctl"], base, "bare"),
            Variant("taskctl + OTLP", me, up, otlp, "bare"),
            Variant(
                "taskctl + OTLP, detail test",
                me,
                [*up, "--taskctl-span-detail", "test"],
                otlp,
                "bare",
            ),
        ]
        if not options.no_peers:
            peer_python, note = ensure_peer_venv()
            if peer_python is None:
                print(f"peers unavailable: {note}", file=sys.stderr)
            else:
                opentelemetry, otel = PEER_PLUGINS
                variants += [
                    Variant(
                        "peer venv: bare",
                        peer_python,
                        ["-p", f"no:{opentelemetry}", "-p", f"no:{otel}"],
                        peer_env(base),
                        "peer venv: bare",
                    ),
                    Variant(
                        "pytest-otel + OTLP",
                        peer_python,
                        ["-p", f"no:{opentelemetry}"],
                        peer_env(otlp),
                        "peer venv: bare",
                    ),
                ]
        out = tmp / "probe.json"
        for variant in variants:  # warm-up: bytecode compiled, not measured
            run_once(variant, suite, out, options.tests, {})
        for round_index in range(options.runs):
            for variant in variants:
                run_once(variant, suite, out, options.tests, samples)
            print(f"round {round_index + 1}/{options.runs} done", file=sys.stderr)
    finally:
        if receiver is not None:
            receiver.stop()
        etcd.stop()

    measured = {v.name: summary(samples[v.name]) for v in variants if samples.get(v.name)}
    # Threads worth a column of their own; the rest are summed as "other threads".
    threads = sorted(
        {
            name
            for medians in measured.values()
            for name, value in medians.items()
            if name not in ("main thread", "span process", "total") and value >= MIN_COLUMN
        }
    )
    headers = ["variant", "main thread", *threads, "other threads", "span process"]
    headers += ["total", "total - bare"]
    rows = []
    for variant in variants:
        if variant.name not in measured:
            continue
        medians = measured[variant.name]
        shown = ("main thread", *threads, "span process", "total")
        others = sum(value for name, value in medians.items() if name not in shown)
        baseline = measured.get(variant.baseline, {}).get("total")
        extra = "" if baseline is None else f"{medians['total'] - baseline:+.0f}"
        cells = [medians.get(name, 0.0) for name in ("main thread", *threads)]
        cells += [others, medians.get("span process", 0.0), medians["total"]]
        rows.append([variant.name, *(f"{c:.1f}" if c >= 0.05 else "" for c in cells), extra])
    print(f"# CPU a test, by thread (µs, median of {options.runs} runs)\n")
    print(machine_line())
    print(f"{code_version()}; {options.tests} trivial tests, window from test {options.skip + 1}\n")
    print(markdown_table(headers, rows))
    bad = [f"{v.name}: {f}" for v in variants for f in v.failures]
    remove_tree(tmp)
    return report_end(bad, started)


if __name__ == "__main__":
    sys.exit(main())
