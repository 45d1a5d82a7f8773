"""Live-pause decision latency, and what recording results for resume costs.

    .venv/bin/python benchmarks/decision_latency.py [--pauses 20] [--tests 2000] [--runs 5]

Starts a private etcd and measures, on loopback:

1. **Decisions.** One pytest run whose tests each call ``checkpoint()`` and
   stamp ``time.time()`` the moment it returns. This process finds each
   pending pause (``list_pauses``, polled every 5 ms), answers it with
   ``pauses.decide`` -- the code ``taskctl decide`` runs -- and times the
   test's stamp from the moment ``decide`` returned (the transaction is
   committed by then) and from the moment it was called. A few more pauses
   are answered by the command-line tool in a subprocess, timed from its
   start. The last pause is ended by writing ``<run>/cancelled``.
2. **Durability of results.** A run of trivial tests (a burst of results,
   the worst case for the batching writer) and one of tests that sleep
   10 ms, each stamping ``time.time()`` at the end of its body. A watch on
   ``<run>/results/`` in this process times when each result reaches etcd.
3. **Cost per test.** ``--tests`` trivial tests, ``--runs`` interleaved runs
   per variant: taskctl with etcd up, with and without the per-test result
   recording (``-p no:taskctl-pytest_taskctl.features.resume`` keeps the lease and the
   local file's opening, drops the per-test work), and bare pytest. The cost
   is given from the fastest wall time and from the median CPU time (user +
   system of the pytest process and its threads), which other load on the
   machine disturbs much less than wall time. And, in-process, the time the
   recording hook takes on the test's thread for ``--tests`` tests.

Prints Markdown tables. Writes only under a temp directory.
"""

from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # before any import that could write __pycache__ here

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

from _common import (  # noqa: E402
    PYTEST_INI,
    clean_env,
    code_version,
    kill_group,
    machine_line,
    markdown_table,
    median,
    percentile,
    remove_tree,
)

from pytest_taskctl import StateStore  # noqa: E402
from pytest_taskctl.etcd.gateway import prefix_end  # noqa: E402
from pytest_taskctl.etcd.server import EmbeddedEtcd, free_port  # noqa: E402
from pytest_taskctl.etcd.watch import open_stream  # noqa: E402
from pytest_taskctl.features.pauses import decide, list_pauses  # noqa: E402

PREFIX = "/bench-decisions"

CHECKPOINT_SUITE = """
import os, time
import pytest
from pytest_taskctl import checkpoint

def _stamp(text):
    with open(os.environ["STAMPS"], "a") as f:
        f.write(text + "\\n")

@pytest.mark.parametrize("n", range({count}))
def test_pause(n):
    decision = checkpoint(task=f"pause {{n}}", timeout=60)
    _stamp(f"{{n}} {{time.time()!r}} {{decision.outcome}}")

def test_cancelled():
    decision = checkpoint(task="cancel me", timeout=60)
    _stamp(f"cancel {{time.time()!r}} {{decision.outcome}}")

def test_after_cancel():
    _stamp("after-cancel ran")
"""

RESULTS_SUITE = """
import os, time
import pytest

@pytest.mark.parametrize("n", range({count}))
def test_r(n):
    time.sleep({sleep})
    with open(os.environ["STAMPS"], "a") as f:
        f.write(f"{{n}} {{time.time()!r}}\\n")
"""


def stats_ms(values: list[float]) -> list[str]:
    ms = [v * 1000 for v in values]
    return [
        str(len(ms)),
        f"{median(ms):.1f}",
        f"{percentile(ms, 0.9):.1f}",
        f"{percentile(ms, 0.99):.1f}",
        f"{max(ms):.1f}",
    ]


def wait_for(condition: Any, timeout: float, interval: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met")


def start_pytest(
    directory: Path, env: dict[str, str], run_id: str, *args: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--run-id", run_id, *args],
        cwd=directory,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


# -- 1. decisions ------------------------------------------------------------------


def measure_decisions(
    tmp: Path, env: dict[str, str], store: StateStore, pauses: int, by_cli: int
) -> str:
    directory = tmp / "decisions"
    directory.mkdir()
    (directory / "pytest.ini").write_text(PYTEST_INI)
    (directory / "test_pauses.py").write_text(CHECKPOINT_SUITE.format(count=pauses + by_cli))
    stamps = directory / "stamps.txt"
    run_env = {**env, "STAMPS": str(stamps)}
    process = start_pytest(directory, run_env, "decisions")

    def stamp_of(label: str) -> float | None:
        if not stamps.exists():
            return None
        for line in stamps.read_text().splitlines():
            parts = line.split()
            if parts and parts[0] == label:
                return float(parts[1])
        return None

    def pending_pause() -> dict[str, Any] | None:
        found = list_pauses(store, "decisions")
        return found[0] if found else None

    from_return, from_call, decide_calls, cli_total, cli_call = [], [], [], [], []
    rng = random.Random(1)
    try:
        for n in range(pauses + by_cli):
            pause = wait_for(pending_pause, 60)
            time.sleep(rng.uniform(0, 0.03))  # de-phase from the waiting side's poll slices
            if n < pauses:
                called = time.time()
                decide(store, pause["pause_id"], result="true", reason="bench")
                returned = time.time()
            else:
                called = time.time()
                done = subprocess.run(
                    [sys.executable, "-m", "pytest_taskctl.cli", "decide",
                     pause["pause_id"], "--result", "true"],
                    env=env, capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                returned = time.time()
                if done.returncode != 0:
                    raise RuntimeError(done.stderr)
            resumed = wait_for(lambda n=n: stamp_of(str(n)), 30)
            if n < pauses:
                from_return.append(resumed - returned)
                from_call.append(resumed - called)
                decide_calls.append(returned - called)
            else:
                cli_total.append(resumed - called)
                cli_call.append(returned - called)
        wait_for(lambda: any(p["task"] == "cancel me" for p in list_pauses(store, "decisions")), 60)
        time.sleep(0.01)
        called = time.time()
        store.set_flag("decisions", "cancelled")
        returned = time.time()
        cancel_at = wait_for(lambda: stamp_of("cancel"), 30)
        process.wait(60)
        lines = stamps.read_text()
        cancelled_ok = "cancel" in lines and " cancelled" in lines and "after-cancel" not in lines
    finally:
        kill_group(process)  # type: ignore[arg-type]
    rows = [
        ["decision acted on, from `decide()` returning", *stats_ms(from_return)],
        ["decision acted on, from `decide()` called", *stats_ms(from_call)],
        ["`decide()` itself (read, lease check, txn)", *stats_ms(decide_calls)],
    ]
    if cli_total:
        rows.append(
            ["CLI `decide` (new process): test resumed, from its start", *stats_ms(cli_total)]
        )
        rows.append(["CLI `decide` (new process): its wall time", *stats_ms(cli_call)])
    rows.append(["cancel acted on, from the flag's write returning", "1",
                 *[f"{(cancel_at - returned) * 1000:.1f}"] * 4])  # fmt: skip
    table = markdown_table(["what", "n", "median ms", "p90 ms", "p99 ms", "max ms"], rows)
    note = (
        "" if cancelled_ok else "\n\n**cancel did not end the pause / skip the rest as expected**"
    )
    return table + note


# -- 2. durability of results ---------------------------------------------------------


def measure_durability(
    tmp: Path, env: dict[str, str], store: StateStore, count: int, sleep: float, name: str
) -> list[str]:
    directory = tmp / f"durability-{name}"
    directory.mkdir()
    (directory / "pytest.ini").write_text(PYTEST_INI)
    (directory / "test_results.py").write_text(RESULTS_SUITE.format(count=count, sleep=sleep))
    stamps = directory / "stamps.txt"
    results = store.keys(name).results
    arrived: dict[str, float] = {}
    start = store.gateway.range(results, prefix_end(results))
    stream = open_stream(store.gateway, results, prefix_end(results), start.revision + 1)

    def collect() -> None:
        try:
            for _, events in stream:
                now = time.time()
                for kind, _key, value, *_ in events:
                    if kind != "DELETE" and value:
                        arrived.setdefault(json.loads(value)["nodeid"], now)
        except Exception:
            pass  # closed at the end

    watcher = threading.Thread(target=collect, daemon=True)
    watcher.start()
    process = start_pytest(directory, {**env, "STAMPS": str(stamps)}, name)
    try:
        process.wait(300)
        wait_for(lambda: len(arrived) >= count, 10)
    finally:
        stream.close()
        kill_group(process)  # type: ignore[arg-type]
    ended = {}
    for line in stamps.read_text().splitlines():
        n, stamp = line.split()
        ended[f"test_results.py::test_r[{n}]"] = float(stamp)
    latencies = [arrived[nodeid] - stamp for nodeid, stamp in ended.items() if nodeid in arrived]
    missing = len(ended) - len(latencies)
    label = f"{count} tests, {'trivial' if not sleep else f'{sleep * 1000:.0f} ms each'}"
    return [label + (f" ({missing} never arrived)" if missing else ""), *stats_ms(latencies)]


# -- 3. cost per test -------------------------------------------------------------------


def measure_cost(tmp: Path, env: dict[str, str], tests: int, runs: int) -> str:
    directory = tmp / "cost"
    directory.mkdir()
    (directory / "pytest.ini").write_text(PYTEST_INI)
    for index, first in enumerate(range(0, tests, 50)):
        body = "".join(
            f"def test_{first + i:05d}():\n    assert True\n\n\n"
            for i in range(min(50, tests - first))
        )
        (directory / f"test_trivial_{index:03d}.py").write_text(body)
    variants = {
        "bare pytest (-p no:taskctl)": ["-p", "no:taskctl"],
        "taskctl, etcd up, no result recording": [
            "-p",
            "no:taskctl-pytest_taskctl.features.resume",
        ],
        "taskctl, etcd up (results recorded)": [],
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    counter = 0
    for _ in range(runs):
        for name, args in variants.items():
            counter += 1
            run_id = [] if "no:taskctl" in args else ["--run-id", f"cost-{counter}"]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *run_id, *args],
                cwd=directory, env=env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            times[name].append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            if done.returncode != 0:
                raise RuntimeError(f"{name}: exit {done.returncode}\n{done.stdout[-2000:]}")
            remove_tree(directory / "logs")
    base = "taskctl, etcd up, no result recording"
    rows = []
    for name in variants:
        wall_extra = cpu_extra = "—"
        if name == "taskctl, etcd up (results recorded)":
            wall_extra = f"{(min(times[name]) - min(times[base])) / tests * 1e6:+.0f}"
            cpu_extra = f"{(median(cpu[name]) - median(cpu[base])) / tests * 1e6:+.0f}"
        rows.append(
            [
                name,
                f"{median(times[name]):.3f}",
                f"{min(times[name]):.3f}",
                f"{median(cpu[name]):.3f}",
                wall_extra,
                cpu_extra,
            ]
        )
    return markdown_table(
        [
            "variant",
            "median wall s",
            "min wall s",
            "median CPU s",
            "recording µs/test (min wall)",
            "recording µs/test (median CPU)",
        ],
        rows,
    )


def measure_hook(tmp: Path, store: StateStore, count: int) -> str:
    """The per-test work on the test's thread, in-process: a test's three reports folded
    (as TaskRun does), its record built, queued on the writer and appended to the local
    record, the attempt's counts in meta updated. The writer's thread writes to etcd
    meanwhile, as in a run."""
    import pytest

    from pytest_taskctl.etcd.writer import KeyWriter
    from pytest_taskctl.features.resume import ResumePlugin
    from pytest_taskctl.outcome import TestOutcome

    settings = SimpleNamespace(keys=store.keys("hook"), run_dir=tmp / "hook")
    writer = KeyWriter(store.gateway)
    run = SimpleNamespace(
        settings=settings,
        writer=writer,
        is_worker=False,
        lost_ownership=False,
        control=SimpleNamespace(meta={}, update_meta=lambda **fields: None),
    )
    plugin = ResumePlugin(SimpleNamespace(option=SimpleNamespace(taskctl_resume=False)), run)  # type: ignore[arg-type]
    plugin.local.open(1, resume=False)
    plugin.recording = True
    plugin._attempts = [{"attempt": 1, "counts": {}}]
    plugin.to_run = count
    reports = [
        [
            pytest.TestReport(
                f"tests/test_x.py::test_{n}[a/b]",
                ("tests/test_x.py", n, "t"),
                {},
                "passed",
                None,
                when,
                duration=0.0001,
            )  # fmt: skip
            for when in ("setup", "call", "teardown")
        ]
        for n in range(count)
    ]
    started = time.perf_counter()
    for triple in reports:
        outcome = TestOutcome()
        for report in triple:
            outcome.record(report)
        plugin.pytest_taskctl_test_finished(run, triple[0].nodeid, outcome)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    plugin.local.close()
    landed = writer.close(5.0)
    stored = len(store.gateway.range_prefix(settings.keys.results, keys_only=True).kvs)
    return markdown_table(
        ["tests", "µs per test on the test's thread", "results in etcd afterwards"],
        [[str(count), f"{elapsed / count * 1e6:.1f}", f"{stored}" + ("" if landed else " (late)")]],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pauses", type=int, default=20, help="pauses decided in-process (20)")
    parser.add_argument("--cli", type=int, default=3, help="pauses decided by the CLI (3)")
    parser.add_argument("--results", type=int, default=300, help="tests per durability run")
    parser.add_argument("--tests", type=int, default=2000, help="trivial tests for the cost (2000)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per cost variant (5)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    options = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="taskctl-bench-decisions-"))
    etcd = EmbeddedEtcd(tmp / "etcd" / "data", port=free_port())
    try:
        etcd.start()
        env = clean_env(
            tmp / "pycache",
            PYTEST_TASKCTL_ETCD=etcd.endpoint,
            PYTEST_TASKCTL_PREFIX=PREFIX,
        )
        print(f"# Live pauses and resume records\n\n{machine_line()}; {code_version()}\n")
        with StateStore(etcd.endpoint, PREFIX) as store:
            print("## Decisions\n")
            print(measure_decisions(tmp, env, store, options.pauses, options.cli))
            print("\n## Results durable in etcd after each test's end\n")
            rows = [
                measure_durability(tmp, env, store, options.results, 0.0, "burst"),
                measure_durability(tmp, env, store, options.results // 3, 0.01, "paced"),
            ]
            print(markdown_table(["run", "n", "median ms", "p90 ms", "p99 ms", "max ms"], rows))
            print("\n## Result recording on the test's thread (in-process)\n")
            print(measure_hook(tmp, store, options.tests))
        print(f"\n## Cost of recording results ({options.tests} trivial tests)\n")
        print(measure_cost(tmp, env, options.tests, options.runs))
    finally:
        etcd.stop()
        if not options.keep:
            remove_tree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
