"""``--join``: N processes sharing one run against one etcd, versus one plain process.

    .venv/bin/python benchmarks/join.py [--procs 3] [--trivial 300] [--slow 30] [--sleep 0.1]
                                        [--threads T]

Two suites, each timed as one plain ``pytest --run-id`` process and as N
``pytest --run-id --join`` processes started together (all with taskctl on,
against a private etcd on loopback); with ``--threads T`` (T > 1) also as N
joined processes on T threads each (``--thread T --group-unit function``):

* ``wall s``: first start to last exit; ``ideal s``: the plain run's test time
  divided by N (N x T on threads) plus one interpreter start (what perfect
  sharing would give);
* ``claims/s``: claim transactions of all processes over the join's wall time;
* ``etcd req/test``: unary requests etcd served during the variant (from its
  ``/metrics``: txn, range, put, lease calls; watch streams not counted) per test;
* ``cost/test ms``: process time per test above the plain run's
  (sum of the processes' session seconds minus the plain session, over M;
  not shown on threads, whose session time counts tests running at once once).

Prints a Markdown table. Writes only under a temp directory.
"""

from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # before any import that could write __pycache__ here

import argparse  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

from _common import (  # noqa: E402
    PYTEST_INI,
    clean_env,
    code_version,
    kill_group,
    machine_line,
    markdown_table,
    remove_tree,
)

from pytest_taskctl.etcd.server import EmbeddedEtcd, free_port  # noqa: E402

SUITE = """
import os, time, pytest
SLEEP = float(os.environ.get("SLEEP", "0"))

@pytest.mark.parametrize("n", range(int(os.environ["COUNT"])))
def test_t(n):
    if SLEEP:
        time.sleep(SLEEP)
"""
SESSION = re.compile(r"in ([0-9.]+)s")
CLAIMS = re.compile(r"\((\d+) claims\)")
UNARY = re.compile(
    r'grpc_server_started_total\{grpc_method="(\w+)",grpc_service="[^"]+",grpc_type="unary"\} (\d+)'
)


def etcd_requests(endpoint: str) -> int:
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(int(count) for _, count in UNARY.findall(text))


def run_variant(
    path: Path, env: dict[str, str], run_id: str, procs: int, join: bool, threads: int = 1
) -> tuple[float, list[str]]:
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--run-id", run_id]
    if join:
        args.append("--join")
    if threads > 1:
        args += ["--thread", str(threads), "--group-unit", "function"]
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            args,
            cwd=path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for _ in range(procs)
    ]
    outputs = []
    try:
        for process in processes:
            out, _ = process.communicate(timeout=300)
            outputs.append(out)
            if process.returncode != 0:
                raise SystemExit(f"{run_id}: exit {process.returncode}\n{out[-2000:]}")
    finally:
        for process in processes:
            kill_group(process)  # type: ignore[arg-type]
    return time.monotonic() - started, outputs


def session_seconds(outputs: list[str]) -> float:
    return sum(float(SESSION.findall(out)[-1]) for out in outputs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=3)
    parser.add_argument("--trivial", type=int, default=300)
    parser.add_argument("--slow", type=int, default=30)
    parser.add_argument("--sleep", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="taskctl-join-bench-") as tmp:
        root = Path(tmp)
        etcd = EmbeddedEtcd(root / "etcd", port=free_port()).start()
        try:
            work = root / "suite"
            work.mkdir()
            (work / "pytest.ini").write_text(PYTEST_INI)
            (work / "test_join_bench.py").write_text(SUITE)
            base = clean_env(root / "pycache", PYTEST_TASKCTL_ETCD=etcd.endpoint)
            for name, count, sleep in (
                ("trivial", args.trivial, 0.0),
                (f"slow {args.sleep}s", args.slow, args.sleep),
            ):
                env = {**base, "COUNT": str(count), "SLEEP": str(sleep)}
                before = etcd_requests(etcd.endpoint)
                plain_wall, plain_out = run_variant(work, env, f"plain-{count}", 1, False)
                plain_requests = etcd_requests(etcd.endpoint) - before
                plain_session = session_seconds(plain_out)
                rows.append(
                    (
                        f"{name}: plain",
                        count,
                        f"{plain_wall:.2f}",
                        "-",
                        "-",
                        f"{plain_requests / count:.1f}",
                        "-",
                    )
                )
                startup = plain_wall - plain_session
                for threads in sorted({1, args.threads}):
                    before = etcd_requests(etcd.endpoint)
                    wall, outputs = run_variant(
                        work, env, f"join-{count}-{threads}", args.procs, True, threads
                    )
                    requests = etcd_requests(etcd.endpoint) - before
                    claims = sum(int(m) for out in outputs for m in CLAIMS.findall(out))
                    ideal = plain_session / (args.procs * threads) + startup
                    extra = (session_seconds(outputs) - plain_session) / count * 1000
                    label = f"{args.procs} x --join" + (f" --thread {threads}" * (threads > 1))
                    rows.append(
                        (
                            f"{name}: {label}",
                            count,
                            f"{wall:.2f}",
                            f"{ideal:.2f}",
                            f"{claims / wall:.0f}",
                            f"{requests / count:.1f}",
                            f"{extra:.2f}" if threads == 1 else "-",  # sessions overlap tests
                        )
                    )
        finally:
            etcd.stop()
            remove_tree(root)
    print(f"{machine_line()}; {code_version()}")
    print(
        markdown_table(
            ("variant", "tests", "wall s", "ideal s", "claims/s", "etcd req/test", "cost/test ms"),
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
