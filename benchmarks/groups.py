"""Concurrent groups on threads versus a sequential run and pytest-xdist.

    .venv/bin/python benchmarks/groups.py [--runs 5] [--threads 4] [--groups 4] \\
        [--tests 10] [--sleep 0.1]

Generates G modules (one group each) of T tests that each sleep S seconds
(an IO-bound test) and use one session-scoped fixture, and times
``pytest -q -p no:cacheprovider`` in subprocesses, the variants interleaved,
median of R runs, all with pytest-taskctl on against a private etcd:

* ``sequential``: no option;
* ``--thread N``: groups on N threads in one process;
* ``xdist -n N``: pytest-xdist with N worker processes;
* ``xdist -n N, taskctl off``: the same with ``-p no:taskctl`` (what xdist itself costs).

``wall s`` is the subprocess's time (interpreter start to exit); ``session s``
is pytest's own "in X s" (from session start: collection, tests, teardown).
``setups`` counts how often the session fixture was set up (xdist: once per
worker). Prints a Markdown table. Writes only under a temp directory.
"""

from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # before any import that could write __pycache__ here

import argparse  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from _common import (  # noqa: E402
    PYTEST_INI,
    clean_env,
    code_version,
    kill_group,
    machine_line,
    markdown_table,
    median,
    remove_tree,
    report_end,
)

from pytest_taskctl.etcd.server import EmbeddedEtcd, free_port  # noqa: E402

RUN_TIMEOUT = 120.0

CONFTEST = '''
import os
import pytest

@pytest.fixture(scope="session")
def service():
    """Stands for an expensive shared resource (a login, a client): counted per setup."""
    with open(os.environ["BENCH_SETUPS"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    yield "service"
'''


def write_suite(root: Path, groups: int, tests: int, sleep: float) -> None:
    root.mkdir(parents=True)
    (root / "pytest.ini").write_text(PYTEST_INI)
    (root / "conftest.py").write_text(CONFTEST)
    for group in range(groups):
        body = "".join(
            f"def test_{i:03d}(service):\n    time.sleep({sleep})\n\n\n" for i in range(tests)
        )
        (root / f"test_group{group}.py").write_text("import time\n\n\n" + body)


@dataclass
class Variant:
    name: str
    args: list[str]
    walls: list[float] = field(default_factory=list)
    sessions: list[float] = field(default_factory=list)
    setups: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    started: int = 0


def run_once(variant: Variant, suite: Path, output: Path, env: dict[str, str], total: int) -> None:
    variant.started += 1
    number = variant.started
    slug = "".join(c if c.isalnum() else "_" for c in variant.name)
    log_path = output / f"{slug}-{number}.out"
    setups_path = output / f"{slug}-{number}.setups"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *variant.args]
    with open(log_path, "wb") as out:
        start = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=suite,
            env={**env, "BENCH_SETUPS": str(setups_path)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = process.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            kill_group(process)
            code = -9
        wall = time.perf_counter() - start
    text = log_path.read_text(errors="replace")
    match = re.search(rf"^{total} passed in ([0-9.]+)s", text, re.MULTILINE)
    if code != 0 or match is None:
        tail = " / ".join(text.strip().splitlines()[-3:])
        variant.failures.append(f"exit {code}: {tail!r} (output: {log_path})")
        return
    variant.walls.append(wall)
    variant.sessions.append(float(match.group(1)))
    variant.setups.append(len(setups_path.read_text().splitlines()))


def table(variants: list[Variant]) -> str:
    base = variants[0]
    base_wall, base_session = median(base.walls), median(base.sessions)
    rows = []
    for v in variants:
        wall, session = median(v.walls), median(v.sessions)
        setups = sorted(set(v.setups))
        rows.append(
            [
                f"`{v.name}`",
                f"{wall:.2f}",
                f"{session:.2f}",
                f"{base_wall / wall:.2f}×",
                f"{base_session / session:.2f}×",
                "/".join(str(s) for s in setups) or "-",
            ]
        )
    headers = ["variant", "wall s", "session s", "speed-up (wall)", "speed-up (session)", "setups"]
    return markdown_table(headers, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per variant (default 5)")
    parser.add_argument("--threads", type=int, default=4, help="N for --thread and -n (default 4)")
    parser.add_argument("--groups", type=int, default=4, help="modules = groups (default 4)")
    parser.add_argument("--tests", type=int, default=10, help="tests per group (default 10)")
    parser.add_argument("--sleep", type=float, default=0.1, help="seconds per test (default 0.1)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    options = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="taskctl-bench-groups-"))
    suite, output = tmp / "suite", tmp / "output"
    output.mkdir()
    write_suite(suite, options.groups, options.tests, options.sleep)
    total = options.groups * options.tests
    n = str(options.threads)
    variants = [
        Variant("sequential", []),
        Variant(f"--thread {n}", ["--thread", n]),
        Variant(f"xdist -n {n}", ["-n", n]),
        Variant(f"xdist -n {n}, taskctl off", ["-n", n, "-p", "no:taskctl"]),
    ]
    etcd = EmbeddedEtcd(tmp / "etcd" / "data", port=free_port())
    started = time.monotonic()
    try:
        etcd.start()
        env = clean_env(
            tmp / "pycache", PYTEST_TASKCTL_ETCD=etcd.endpoint, PYTEST_TASKCTL_PREFIX="/bench"
        )
        for v in variants:  # warm-up, not timed: bytecode compiled once
            run_once(v, suite, output, env, total)
            v.walls.clear(), v.sessions.clear(), v.setups.clear()
        for round_index in range(options.runs):
            for v in variants:
                run_once(v, suite, output, env, total)
            print(f"round {round_index + 1}/{options.runs} done", file=sys.stderr)
        bad = [f"{v.name}: {failure}" for v in variants for failure in v.failures]
        if any(not v.walls for v in variants):
            print("\n".join(bad), file=sys.stderr)
            return 1

        threaded, xdist = variants[1], variants[2]
        speedup = median(variants[0].sessions) / median(threaded.sessions)
        target = 0.8 * options.threads
        print(
            f"## Groups on threads: {options.groups} groups × {options.tests} tests of "
            f"{options.sleep} s sleep, median of {options.runs} interleaved runs\n"
        )
        print(f"Machine: {machine_line()}; {code_version()}.\n")
        print(table(variants))
        print(
            f"\n`--thread {n}` speed-up over sequential (session): {speedup:.2f}× "
            f"(target ≥ {target:.1f}×: {'met' if speedup >= target else 'NOT met'}); "
            f"faster than `xdist -n {n}`: "
            f"{'yes' if median(threaded.walls) < median(xdist.walls) else 'NO'} (wall)."
        )
        return report_end(bad, started)
    finally:
        etcd.stop()
        if options.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            remove_tree(tmp)


if __name__ == "__main__":
    sys.exit(main())
