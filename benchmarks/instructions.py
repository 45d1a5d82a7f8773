"""Instructions per test, counted by callgrind: the deterministic twin of ``overhead.py``.

    .venv/bin/python benchmarks/instructions.py [--tests 1000] [--peers]

Wall and CPU times on a shared 2-core machine move by 10-50 % between runs
(``docs/benchmarks.md``); instructions do not. Each variant of
``overhead.py`` runs once under ``valgrind --tool=callgrind`` on an N-test and
on a 250-test suite (N/4 below 1000); the marginal instructions per test are
the difference divided by N - 250 (one-time work -- imports, the first drain
-- cancels out), counted separately for

* pytest's main thread (where the tests run),
* pytest's other threads (the plugin's writer, span, log threads...).

The span process runs outside valgrind and is not in the table: under
valgrind it is too slow to end within the run's export deadline (it is
killed before callgrind writes its counts), and gRPC's threads poll on
timers. ``overhead.py``'s CPU column includes it (a reaped child's CPU
time is added to its parent's).

Instructions are not time: a GIL hand-over or a cache miss costs no
instruction. Read this table for what the plugin *does*, ``overhead.py``
for what it costs. Needs valgrind; a run takes a few minutes. Work that
happens once but at a moment that varies (the last drain of spans, a
garbage collection) still moves the main thread's figure by up to ~30k a
test at 1000 tests and ~5k at ``--tests 2000``: compare builds at 2000.
"""

from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # before any import that could write __pycache__ here

import argparse  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

from _common import Receiver, clean_env, code_version, machine_line, markdown_table  # noqa: E402
from overhead import (  # noqa: E402
    Variant,
    ensure_peer_venv,
    peer_env,
    peer_variants,
    pytest_cmd,
    write_suite,
)

from pytest_taskctl.etcd.server import EmbeddedEtcd, free_port  # noqa: E402

RUN_TIMEOUT = 900.0
_TOTALS = re.compile(rb"^(?:summary|totals): (\d+)", re.MULTILINE)


def count(variant: Variant, suite: Path, out: Path) -> dict[str, int]:
    """Instructions of one run: pytest's ``main`` thread and its other ``threads``."""
    out.mkdir(parents=True)
    command = [
        "valgrind", "--tool=callgrind", "--separate-threads=yes", "--trace-children=no",
        "--dump-instr=no", f"--callgrind-out-file={out}/cg.%p", *pytest_cmd(variant.python,
        *variant.args),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=suite, env=variant.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output, _ = process.communicate(timeout=RUN_TIMEOUT)
    if process.returncode not in (0, None):
        tail = output.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{variant.name}: exit {process.returncode}: {tail}")
    totals: dict[str, int] = defaultdict(int)
    for path in out.glob("cg.*"):
        found = _TOTALS.search(path.read_bytes())
        if found is None:
            continue
        pid, _, thread = path.name[3:].partition("-")
        if int(pid) != process.pid:
            continue  # not ours (see the module docstring)
        if thread in ("", "01"):
            totals["main"] += int(found.group(1))
        else:
            totals["threads"] += int(found.group(1))
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=1000, help="number of trivial tests (1000)")
    parser.add_argument("--peers", action="store_true", help="also pytest-opentelemetry, -otel")
    parser.add_argument(
        "--only", metavar="TEXT", help="only variants whose name contains TEXT (and their bare)"
    )
    options = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="taskctl-bench-instructions-"))
    small = max(2, min(250, options.tests // 4))
    suites = {options.tests: tmp / "suite", small: tmp / "suite-small"}
    for size, path in suites.items():
        write_suite(path, size)
    etcd = EmbeddedEtcd(tmp / "etcd" / "data", port=free_port())
    etcd.start()
    receiver = Receiver()
    started = time.monotonic()
    try:
        env = clean_env(tmp / "pycache")
        otlp = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
        up = ["--taskctl-etcd", etcd.endpoint]
        me = sys.executable
        variants = [
            Variant("bare", me, ["-p", "no:taskctl"], env),
            Variant("taskctl (etcd down)", me, ["--taskctl-etcd", "127.0.0.1:1"], env),
            Variant("taskctl (etcd up)", me, up, env),
            Variant("taskctl + OTLP", me, up, otlp),
            Variant(
                "taskctl + OTLP, detail test", me, [*up, "--taskctl-span-detail", "test"], otlp
            ),  # fmt: skip
        ]
        peer_note = ""
        if options.peers:
            peer_python, peer_note = ensure_peer_venv()
            if peer_python is not None:
                variants += [
                    v
                    for v in peer_variants(peer_python, peer_env(env), receiver)
                    if v.runs is None and ("OTLP" in v.name or v.name == "peer venv: bare")
                ]
        if options.only:
            variants = [v for v in variants if options.only in v.name or v.name == v.baseline]
        # Warm-up, not counted: bytecode goes to a temp PYTHONPYCACHEPREFIX, and
        # compiling it once would otherwise be counted as the N-test run's work.
        for variant in variants:
            for suite in suites.values():
                command = pytest_cmd(variant.python, *variant.args)
                subprocess.run(command, cwd=suite, env=variant.env, capture_output=True)
        results: dict[str, dict[int, dict[str, int]]] = {}
        for index, variant in enumerate(variants):
            results[variant.name] = {}
            for size, suite in suites.items():
                out = tmp / "out" / f"{index}-{size}"
                results[variant.name][size] = count(variant, suite, out)
            print(f"{variant.name} done at {time.monotonic() - started:.0f} s", file=sys.stderr)
    finally:
        receiver.stop()
        etcd.stop()
    print(report(variants, results, options.tests, small, peer_note))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def report(
    variants: list[Variant],
    results: dict[str, dict[int, dict[str, int]]],
    tests: int,
    small: int,
    peer_note: str,
) -> str:
    def marginal(name: str, part: str) -> float:
        runs = results[name]
        return (runs[tests].get(part, 0) - runs[small].get(part, 0)) / (tests - small)

    parts_order = ("main", "threads")
    rows = []
    for variant in variants:
        parts = {part: marginal(variant.name, part) for part in parts_order}
        total = sum(parts.values())
        baseline = variant.baseline
        base_total = sum(marginal(baseline, p) for p in parts_order)
        rows.append(
            [
                variant.name,
                *(f"{parts[p] / 1000:,.0f}k" for p in parts_order),
                f"{total / 1000:,.0f}k",
                "—" if variant.name == baseline else f"{(total - base_total) / 1000:+,.0f}k",
                "—" if variant.name == baseline else f"{baseline}",
            ]
        )
    header = ["variant", "main thread", "other threads", "total", "vs baseline", "baseline"]
    lines = [
        f"## Instructions per test (callgrind; marginal: {tests}-test minus {small}-test run, "
        f"/ {tests - small})",
        "",
        f"Machine: {machine_line()}; {code_version()}.",
    ]
    if peer_note:
        lines.append(f"Peer venv: {peer_note}.")
    lines += ["", markdown_table(header, rows)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
