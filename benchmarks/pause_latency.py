"""Pause, resume and cancel latency of pytest-taskctl, end to end.

    .venv/bin/python benchmarks/pause_latency.py [--pauses 10] [--seed 1]

Starts a private etcd and one pytest run (plugin enabled, ``--run-id``,
``PYTEST_TASKCTL_ETCD``) over a suite whose tests each append ``start`` /
``end`` time stamps to a file and sleep 0.05 s. From this process, K times:
wait until a few tests have run, write ``<prefix>/runs/<id>/paused = 1`` with
the real etcdctl Go binary, poll ``<run>/status`` until ``PAUSED``, check from
the stamps that no test started after the write except one already past the
gate, hold the pause a moment, delete the key and time the next test's start.
At the end it puts ``cancelled`` and times the process exit, and checks that
the remaining tests were skipped.

Every latency is measured from the moment etcdctl returned (the write is
committed in etcd by then); the etcdctl call itself (~25-30 ms, mostly process
start) is reported separately. Measuring side polls every 5 ms; all stamps are
``time.time()`` on this machine. Prints Markdown tables; writes only under a
temp directory.
"""

from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # before any import that could write __pycache__ here

import argparse  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TypeVar  # noqa: E402

from _common import (  # noqa: E402
    PYTEST_INI,
    EtcdHTTP,
    clean_env,
    code_version,
    etcdctl,
    kill_group,
    machine_line,
    markdown_table,
    median,
    percentile,
)

from pytest_taskctl.etcd.server import EmbeddedEtcd, etcd_binary, free_port  # noqa: E402

POLL = 0.005
TEST_SLEEP = 0.05
PREFIX = "/pytest-taskctl"
STAMPS_ENV = "TASKCTL_BENCH_STAMPS"
T = TypeVar("T")

SUITE_HEADER = f'''\
import os
import time

STAMPS = os.environ["{STAMPS_ENV}"]


def _stamp(kind, name):
    with open(STAMPS, "a", encoding="utf-8") as handle:
        handle.write(f"{{kind}} {{name}} {{time.time():.6f}}\\n")
        handle.flush()


def _body(name):
    _stamp("start", name)
    time.sleep({TEST_SLEEP})
    _stamp("end", name)

'''


def write_suite(root: Path, tests: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pytest.ini").write_text(PYTEST_INI)
    body = "".join(f"\ndef test_{i:04d}():\n    _body('test_{i:04d}')\n\n" for i in range(tests))
    (root / "test_pause_suite.py").write_text(SUITE_HEADER + body)


@dataclass
class Stamp:
    kind: str
    name: str
    t: float


class Stamps:
    """Reads the stamp file incrementally (whole lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[Stamp] = []
        self._offset = 0
        self._partial = ""

    def refresh(self) -> list[Stamp]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
                self._offset = handle.tell()
        except FileNotFoundError:
            return self.items
        text = self._partial + chunk
        lines = text.split("\n")
        self._partial = lines.pop()
        for line in lines:
            kind, name, stamp = line.split()
            self.items.append(Stamp(kind, name, float(stamp)))
        return self.items

    def starts(self) -> list[Stamp]:
        return [s for s in self.refresh() if s.kind == "start"]

    def ends(self) -> list[Stamp]:
        return [s for s in self.refresh() if s.kind == "end"]


class PytestRun:
    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], out: Path) -> None:
        self.out = out
        self._out_handle = open(out, "wb")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=self._out_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.exit_time: float | None = None
        self._waiter = threading.Thread(target=self._wait, daemon=True)
        self._waiter.start()

    def _wait(self) -> None:
        self.process.wait()
        self.exit_time = time.time()

    def alive(self) -> bool:
        return self.exit_time is None

    def wait(self, timeout: float) -> int | None:
        self._waiter.join(timeout)
        if self._waiter.is_alive():
            kill_group(self.process)
            self._waiter.join()
            self._out_handle.close()
            return None
        self._out_handle.close()
        return self.process.returncode

    def output(self) -> str:
        return self.out.read_text(errors="replace")


class BenchError(RuntimeError):
    pass


def poll(what: str, condition: Callable[[], T | None], run: PytestRun, timeout: float = 10.0) -> T:
    """Call ``condition`` every 5 ms until it returns something not None."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value is not None:
            return value
        if not run.alive():
            value = condition()  # one last look: it may have happened just before the exit
            if value is not None:
                return value
            code = run.process.returncode
            raise BenchError(f"pytest exited (code {code}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL)


@dataclass
class Results:
    etcdctl_ms: list[float] = field(default_factory=list)
    to_paused: list[float] = field(default_factory=list)
    to_halt: list[float] = field(default_factory=list)
    to_next_start: list[float] = field(default_factory=list)
    to_next_start_launch: list[float] = field(default_factory=list)
    to_running: list[float] = field(default_factory=list)
    to_exit: list[float] = field(default_factory=list)
    checks: list[list[str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def pause_cycle(
    index: int,
    run: PytestRun,
    stamps: Stamps,
    status: Callable[[], str | None],
    put: Callable[..., str],
    keys: dict[str, str],
    rng: random.Random,
    results: Results,
    hold: float,
) -> None:
    seen = len(stamps.starts())
    poll("3 more tests to start", lambda: True if len(stamps.starts()) >= seen + 3 else None, run)
    time.sleep(rng.uniform(0, TEST_SLEEP + 0.01))  # land anywhere in a test's life

    t0 = time.time()
    put("put", keys["paused"], "1")
    t1 = time.time()
    results.etcdctl_ms.append((t1 - t0) * 1e3)

    t_paused = poll("status PAUSED", lambda: time.time() if status() == "PAUSED" else None, run)
    results.to_paused.append((t_paused - t1) * 1e3)
    time.sleep(hold)  # nothing may start while paused

    items = stamps.refresh()
    after_write = [s for s in items if s.kind == "start" and s.t > t1]
    after_paused = [s for s in items if s.kind == "start" and s.t > t_paused]
    started = {s.name for s in items if s.kind == "start"}
    ended = {s.name for s in items if s.kind == "end"}
    in_flight = sorted(started - ended)
    last_end = max(s.t for s in items if s.kind == "end")
    results.to_halt.append(max(0.0, last_end - t1) * 1e3)
    ok = len(after_write) <= 1 and not after_paused and not in_flight
    if not ok:
        results.problems.append(
            f"pause {index + 1}: {len(after_write)} test(s) started after the write "
            f"({[s.name for s in after_write]}), {len(after_paused)} after PAUSED, "
            f"in flight while paused: {in_flight}"
        )

    r0 = time.time()
    put("del", keys["paused"])
    r1 = time.time()
    results.etcdctl_ms.append((r1 - r0) * 1e3)
    first = poll(
        "the next test start after resume",
        lambda: next((s.t for s in stamps.starts() if s.t > last_end), None),
        run,
    )
    results.to_next_start.append((first - r1) * 1e3)
    results.to_next_start_launch.append((first - r0) * 1e3)
    t_running = poll("status RUNNING", lambda: time.time() if status() == "RUNNING" else None, run)
    results.to_running.append((t_running - r1) * 1e3)
    results.checks.append(
        [
            str(index + 1),
            str(len(after_write)),
            "yes" if ok else "NO",
            f"{round((t_paused - t1) * 1e3):d}",
            f"{round(max(0.0, last_end - t1) * 1e3):d}",
            f"{round((first - r1) * 1e3):d}",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pauses", type=int, default=10, help="pause/resume cycles (10)")
    parser.add_argument("--hold", type=float, default=0.3, help="seconds each pause is held (0.3)")
    parser.add_argument("--seed", type=int, default=1, help="seed: where in a test a write lands")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    options = parser.parse_args()

    tests = max(60, options.pauses * 4 + 20)
    tmp = Path(tempfile.mkdtemp(prefix="taskctl-bench-pause-"))
    suite, stamps_path = tmp / "suite", tmp / "stamps.txt"
    write_suite(suite, tests)
    etcd = EmbeddedEtcd(tmp / "etcd" / "data", port=free_port())
    results = Results()
    rng = random.Random(options.seed)
    run: PytestRun | None = None
    started = time.monotonic()
    try:
        etcd.start()
        binary = etcd_binary("etcdctl")
        http = EtcdHTTP(etcd.host, etcd.port)
        run_id = f"bench-pause-{secrets.token_hex(3)}"
        root = f"{PREFIX}/runs/{run_id}"
        keys = {name: f"{root}/{name}" for name in ("paused", "cancelled", "status")}

        def put(*args: str) -> str:
            return etcdctl(binary, etcd.endpoint, *args)

        def status() -> str | None:
            return http.get(keys["status"])

        # Warm the bytecode cache (temp PYTHONPYCACHEPREFIX) so start-up is not measured oddly.
        env = clean_env(tmp / "pycache", PYTEST_TASKCTL_ETCD=etcd.endpoint)
        subprocess.run(
            [sys.executable, "-m", "pytest", "--version"], cwd=suite, env=env, capture_output=True
        )
        env[STAMPS_ENV] = str(stamps_path)
        command = [
            sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
            "--run-id", run_id,
        ]  # fmt: skip
        run = PytestRun(command, suite, env, tmp / "pytest.out")
        stamps = Stamps(stamps_path)
        poll("status RUNNING", lambda: True if status() == "RUNNING" else None, run, timeout=30)

        for index in range(options.pauses):
            pause_cycle(index, run, stamps, status, put, keys, rng, results, options.hold)

        # Cancel while tests run.
        seen = len(stamps.starts())
        poll("2 more tests", lambda: True if len(stamps.starts()) >= seen + 2 else None, run)
        time.sleep(rng.uniform(0, TEST_SLEEP))
        c0 = time.time()
        put("put", keys["cancelled"], "1")
        c1 = time.time()
        results.etcdctl_ms.append((c1 - c0) * 1e3)
        code = run.wait(timeout=30)
        if code is None or run.exit_time is None:
            raise BenchError("pytest did not exit within 30 s of the cancel")
        results.to_exit.append((run.exit_time - c1) * 1e3)

        items = stamps.refresh()
        run_starts = [s for s in items if s.kind == "start"]
        after_cancel = [s for s in run_starts if s.t > c1]
        output = run.output()
        summary = output.strip().splitlines()[-1] if output.strip() else ""
        passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", summary)) else 0
        skipped = int(m.group(1)) if (m := re.search(r"(\d+) skipped", summary)) else 0
        reason_ok = "taskctl: run cancelled" in output
        final_status = status()
        cancel_checks = [
            ["exit code", str(code), "2 (interrupted)", "ok" if code == 2 else "WRONG"],
            ["tests started / total", f"{len(run_starts)} / {tests}", "", ""],
            [
                "tests started after the cancel write",
                str(len(after_cancel)),
                "≤ 1 (already past the gate)",
                "ok" if len(after_cancel) <= 1 else "WRONG",
            ],
            [
                "passed + skipped",
                f"{passed} + {skipped}",
                f"= {tests}, passed = tests started",
                "ok" if passed + skipped == tests and passed == len(run_starts) else "WRONG",
            ],
            [
                "skip reason `taskctl: run cancelled` in -rs output",
                "yes" if reason_ok else "no",
                "yes",
                "ok" if reason_ok else "WRONG",
            ],
            [
                "status key",
                str(final_status),
                "CANCELLED",
                "ok" if final_status == "CANCELLED" else "WRONG",
            ],
            ["pytest summary line", f"`{summary}`", "", ""],
        ]
        for check in cancel_checks:
            if check[3] == "WRONG":
                results.problems.append(f"cancel: {check[0]} = {check[1]}, expected {check[2]}")
        http.close()
    except BenchError as exc:
        results.problems.append(f"benchmark stopped: {exc}")
        cancel_checks = []
        if run is not None:
            kill_group(run.process)
            tail = "\n".join(run.output().splitlines()[-15:])
            results.problems.append(f"pytest output tail:\n{tail}")
    finally:
        if run is not None:
            kill_group(run.process)
        etcd.stop()

    def row(name: str, values: list[float], target: str) -> list[str]:
        if not values:
            return [name, "0", "—", "—", "—", target]
        return [
            name,
            str(len(values)),
            f"{median(values):.1f}",
            f"{percentile(values, 0.9):.1f}",
            f"{max(values):.1f}",
            target,
        ]

    print(
        f"## pytest-taskctl pause / resume / cancel latency: {options.pauses} pauses, "
        f"1 cancel, {tests} tests of {TEST_SLEEP * 1e3:.0f} ms\n"
    )
    print(f"Machine: {machine_line()}; {code_version()}.\n")
    print(
        "Latencies are measured from the moment etcdctl returned (the write is committed "
        "by then); the write itself lands somewhere during the etcdctl call, so a value "
        "near 0 or below 0 means the plugin reacted before etcdctl had exited.\n"
    )
    print(
        markdown_table(
            ["measure", "n", "median ms", "p90 ms", "max ms", "target"],
            [
                row("pause write → status PAUSED", results.to_paused, ""),
                row(
                    "pause write → halt (last test end)",
                    results.to_halt,
                    "the running test ends; no new one",
                ),
                row("resume write → next test start", results.to_next_start, "≤ 50 ms"),
                row(
                    "… same, from etcdctl launch (upper bound)",
                    results.to_next_start_launch,
                    "≤ 50 ms",
                ),
                row("resume write → status RUNNING", results.to_running, ""),
                row("cancel write → process exit", results.to_exit, ""),
                row("etcdctl call (Go binary, process start included)", results.etcdctl_ms, ""),
            ],
        )
    )
    print("\n### Per pause\n")
    print(
        markdown_table(
            [
                "pause",
                "tests started after write",
                "gate held",
                "→ PAUSED ms",
                "→ halt ms",
                "resume → start ms",
            ],
            results.checks,
        )
    )
    if cancel_checks:
        print("\n### Cancel\n")
        print(markdown_table(["check", "value", "expected", "verdict"], cancel_checks))
    if results.problems:
        print("\n### Problems\n")
        for problem in results.problems:
            print(f"- {problem}")
    print(f"\nTotal benchmark time {time.monotonic() - started:.0f} s.")
    if options.keep:
        print(f"kept {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if results.problems else 0


if __name__ == "__main__":
    sys.exit(main())
