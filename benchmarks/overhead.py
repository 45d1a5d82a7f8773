"""Per-test overhead of pytest-taskctl on a suite of trivial tests.

    .venv/bin/python benchmarks/overhead.py [--tests 1000] [--runs 5] [--peers]

Generates N trivial tests in a temp directory and times ``pytest -q -p
no:cacheprovider`` in subprocesses, the variants interleaved, median of R
runs:

* ``bare``: ``-p no:taskctl`` (how users turn the plugin off);
* ``taskctl (etcd down)``: ``--taskctl-etcd 127.0.0.1:1`` (control off, spans to file);
* ``taskctl (etcd up)``: a private etcd, a fresh ``--run-id`` each run, spans to
  ``logs/<run>/traces.jsonl``;
* ``taskctl + OTLP``: as above plus ``OTEL_EXPORTER_OTLP_ENDPOINT`` at an
  OTLP/gRPC receiver running in this process;
* ``taskctl, collector down``: ``OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:1``.

With ``--peers`` it also times pytest-opentelemetry and pytest-otel, installed
into a separate venv under /tmp (created when missing; pytest-taskctl is not in
it), against that venv's own bare pytest.

Prints Markdown tables. Writes only under a temp directory (and the peer venv).
"""

from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # before any import that could write __pycache__ here

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent import futures  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from pathlib import Path  # noqa: E402

from _common import (  # noqa: E402
    PYTEST_INI,
    Receiver,
    clean_env,
    code_version,
    etcdctl,
    machine_line,
    markdown_table,
    median,
    report_end,
)

from pytest_taskctl.etcd.server import EmbeddedEtcd, etcd_binary, free_port  # noqa: E402

CLOSED_ENDPOINT = "http://127.0.0.1:1"
PEER_VENV = Path("/tmp/taskctl-bench-peers")
PEER_PACKAGES = (
    "pytest-opentelemetry==1.1.0",
    "pytest-otel==2.5.1",
    # pytest-otel pins pytest/opentelemetry; the same companions as our venv,
    # so both venvs' "bare" pytest loads the same third-party plugins.
    "pytest-asyncio",
    "pytest-xdist",
    "pytest-rerunfailures",
)
PEER_PLUGINS = ("pytest_opentelemetry", "pytest_otel")  # their pytest11 entry point names
RUN_TIMEOUT = 120.0
PEER_DOWN_TIMEOUT = 60.0
DOWN_NOTE = f"1 run, side by side with the other peer's; killed after {PEER_DOWN_TIMEOUT:.0f} s"


# -- the suite -------------------------------------------------------------------


def write_suite(root: Path, tests: int, per_file: int = 50) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pytest.ini").write_text(PYTEST_INI)
    for index, first in enumerate(range(0, tests, per_file)):
        count = min(per_file, tests - first)
        body = "".join(f"def test_{first + i:05d}():\n    assert True\n\n\n" for i in range(count))
        (root / f"test_trivial_{index:03d}.py").write_text(body)


# -- variants --------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    python: str
    args: list[str]
    env: dict[str, str]
    baseline: str = "bare"
    run_id: bool = False  # a fresh --run-id each run
    receiver: bool = False  # count what the receiver got for the last run
    runs: int | None = None  # None: --runs
    timeout: float = RUN_TIMEOUT
    note: str = ""
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # user + system s of the pytest process
    failures: list[str] = field(default_factory=list)
    last_run_id: str = ""
    received: tuple[int, int] | None = None
    unavailable: str = ""


def pytest_cmd(python: str, *extra: str) -> list[str]:
    return [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]


def run_once(
    variant: Variant,
    suite: Path,
    tests: int,
    counter: list[int],
    receiver: Receiver | None,
    output_dir: Path,
) -> None:
    args = list(variant.args)
    if variant.run_id:
        counter[0] += 1
        variant.last_run_id = f"bench-{counter[0]}"
        args += ["--run-id", variant.last_run_id]
    if variant.receiver and receiver is not None:
        receiver.reset()
    slug = "".join(c if c.isalnum() else "_" for c in variant.name)
    log_path = output_dir / f"{slug}-{tests}-{len(variant.times) + 1}.out"
    reaped: dict[str, object] = {}
    with open(log_path, "wb") as out:
        start = time.perf_counter()
        process = subprocess.Popen(
            pytest_cmd(variant.python, *args),
            cwd=suite,
            env=variant.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def reap() -> None:
            # wait4 gives the child's own CPU time (all its threads), which a
            # busy neighbour on the machine disturbs far less than wall time.
            _, status, usage = os.wait4(process.pid, 0)
            reaped.update(end=time.perf_counter(), status=status, usage=usage)

        reaper = threading.Thread(target=reap, daemon=True)
        reaper.start()
        reaper.join(variant.timeout)
        if reaper.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            reaper.join()
        elapsed = float(reaped["end"]) - start  # type: ignore[arg-type]
        code = process.returncode = os.waitstatus_to_exitcode(reaped["status"])  # type: ignore[arg-type]
        usage = reaped["usage"]
        variant.cpu.append(usage.ru_utime + usage.ru_stime)  # type: ignore[attr-defined]
        if elapsed >= variant.timeout:
            variant.failures.append(f"killed after {elapsed:.1f} s (timeout)")
            variant.times.append(elapsed)
            return
    if variant.receiver and receiver is not None:
        time.sleep(0.05)  # the last export call may still be in the receiver's thread
        variant.received = receiver.counts()
    text = log_path.read_text(errors="replace")
    if code != 0 or not re.search(rf"^{tests} passed in ", text, re.MULTILINE):
        tail = " / ".join(text.strip().splitlines()[-3:])
        variant.failures.append(f"exit {code}: {tail!r} (output: {log_path})")
    variant.times.append(elapsed)


# -- peers -----------------------------------------------------------------------


def peer_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` without PYTHONPATH: the peers' venv must not see the plugin under test."""
    return {name: value for name, value in env.items() if name != "PYTHONPATH"}


def ensure_peer_venv() -> tuple[str | None, str]:
    """``(python, note)``; ``python`` is None when the peers cannot be installed."""
    python = PEER_VENV / "bin" / "python"
    marker = PEER_VENV / ".taskctl-bench-complete"
    if not marker.exists() or marker.read_text().split() != list(PEER_PACKAGES):
        print(f"creating the peer venv {PEER_VENV} (once) ...", file=sys.stderr)
        try:
            subprocess.run(
                [sys.executable, "-m", "venv", "--clear", str(PEER_VENV)],
                check=True,
                capture_output=True,
                timeout=120,
            )
            result = subprocess.run(
                [str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES],
                capture_output=True,
                text=True,
                timeout=600,
                env=clean_env(),
            )
        except (subprocess.SubprocessError, OSError) as exc:
            return None, f"not available: could not create {PEER_VENV}: {exc}"
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["?"])[-1]
            return None, f"not available: pip install failed: {last}"
        marker.write_text(" ".join(PEER_PACKAGES) + "\n")
    probe = subprocess.run(  # PYTHONPATH may point at the plugin under test: not for peers
        [
            str(python),
            "-c",
            "import importlib.util as u, importlib.metadata as m; "
            "assert u.find_spec('pytest_taskctl') is None, 'pytest-taskctl is in the peer venv'; "
            "print(' '.join(f'{d}=={m.version(d)}' for d in "
            "('pytest','pytest-opentelemetry','pytest-otel','opentelemetry-sdk')))",
        ],
        capture_output=True,
        text=True,
        env=peer_env(clean_env()),
    )
    if probe.returncode != 0:
        return None, f"not available: {probe.stderr.strip().splitlines()[-1:]}"
    return str(python), probe.stdout.strip()


def peer_variants(python: str, base_env: dict[str, str], receiver: Receiver) -> list[Variant]:
    def others(keep: str | None) -> list[str]:
        args: list[str] = []
        for plugin in PEER_PLUGINS:
            if plugin != keep:
                args += ["-p", f"no:{plugin}"]
        return args

    otlp = {**base_env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
    down = {**base_env, "OTEL_EXPORTER_OTLP_ENDPOINT": CLOSED_ENDPOINT}
    opentelemetry, otel = PEER_PLUGINS
    return [
        Variant("peer venv: bare", python, others(None), base_env, baseline="peer venv: bare"),
        Variant(
            "pytest-opentelemetry",
            python,
            others(opentelemetry),
            base_env,
            baseline="peer venv: bare",
            note="no exporter (no --export-traces)",
        ),
        Variant(
            "pytest-opentelemetry + OTLP",
            python,
            [*others(opentelemetry), "--export-traces"],
            otlp,
            baseline="peer venv: bare",
            receiver=True,
        ),
        Variant(
            "pytest-otel",
            python,
            others(otel),
            base_env,
            baseline="peer venv: bare",
            note="no endpoint: in-memory exporter, JSON file at the end",
        ),
        Variant(
            "pytest-otel + OTLP",
            python,
            others(otel),
            otlp,
            baseline="peer venv: bare",
            receiver=True,
        ),
        Variant(
            "pytest-opentelemetry, collector down",
            python,
            [*others(opentelemetry), "--export-traces"],
            down,
            baseline="peer venv: bare",
            runs=1,
            timeout=PEER_DOWN_TIMEOUT,
            note=DOWN_NOTE,
        ),
        Variant(
            "pytest-otel, collector down",
            python,
            others(otel),
            down,
            baseline="peer venv: bare",
            runs=1,
            timeout=PEER_DOWN_TIMEOUT,
            note=DOWN_NOTE,
        ),
    ]


# -- report ----------------------------------------------------------------------


def count_spans(traces: Path) -> tuple[int, int, int]:
    """``(lines, spans, session spans)`` of an OTLP/JSON lines file."""
    lines = spans = sessions = 0
    with open(traces, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            lines += 1
            request = json.loads(line)
            for resource_spans in request.get("resourceSpans", []):
                for scope_spans in resource_spans.get("scopeSpans", []):
                    for span in scope_spans.get("spans", []):
                        spans += 1
                        sessions += span.get("name") == "pytest session"
    return lines, spans, sessions


def fmt_s(value: float) -> str:
    return f"{value:.3f}"


def main_table(variants: list[Variant], tests: int) -> str:
    by_name = {v.name: v for v in variants}
    rows = []
    for v in variants:
        if v.unavailable:
            rows.append([v.name, "not available", "", "", "", "", "", v.unavailable])
            continue
        med = median(v.times)
        base = by_name.get(v.baseline)
        if v.name == v.baseline or base is None or base.unavailable:
            overhead, cpu, versus = "—", "—", ""
        else:
            overhead = f"{(med - median(base.times)) / tests * 1e6:,.0f}"
            cpu = f"{(median(v.cpu) - median(base.cpu)) / tests * 1e6:,.0f}"
            versus = v.baseline
        notes = [v.note] if v.note else []
        if v.name == "taskctl, collector down" and "taskctl (etcd up)" in by_name:
            extra = med - median(by_name["taskctl (etcd up)"].times)
            notes.append(f"**{extra:+.2f} s vs etcd up**")
        peer_down = v.name.endswith("collector down") and v.baseline != "bare"
        if peer_down and base is not None:
            notes.append(f"**{med - median(base.times):+.1f} s vs {v.baseline}**")
        if v.failures:
            notes.append(f"{len(v.failures)} bad run(s), see below")
        rows.append(
            [
                v.name,
                fmt_s(med),
                overhead,
                cpu,
                versus,
                fmt_s(min(v.times)),
                fmt_s(max(v.times)),
                "; ".join(notes),
            ]
        )
    return markdown_table(
        [
            "variant",
            "median s",
            "overhead µs/test",
            "CPU µs/test",
            "vs",
            "min s",
            "max s",
            "notes",
        ],
        rows,
    )


def problems(variants: list[Variant], label: str = "") -> list[str]:
    return [f"`{v.name}`{label}: {failure}" for v in variants for failure in v.failures]


def split(
    big: list[float], big_base: list[float], one: list[float], one_base: list[float], tests: int
) -> tuple[float, float]:
    """``(startup s, per-test µs)`` from the N-test and 1-test medians and their baselines."""
    delta_n = median(big) - median(big_base)
    delta_1 = median(one) - median(one_base)
    return delta_1, (delta_n - delta_1) / (tests - 1) * 1e6


def startup_table(pairs: list[tuple[Variant, Variant]], tests: int) -> str:
    one = {v1.name: v1 for _, v1 in pairs}
    big = {v.name: v for v, _ in pairs}
    rows = []
    for v, v1 in pairs:
        base, base1 = big.get(v.baseline), one.get(v1.baseline)
        if base is None or base1 is None:
            continue
        med1 = median(v1.times)
        if v.name == v.baseline:
            rows.append([v.name, f"{med1:.3f}", "—", "—", "—", "—", ""])
            continue

        wall_start, wall_per_test = split(v.times, base.times, v1.times, base1.times, tests)
        cpu_start, cpu_per_test = split(v.cpu, base.cpu, v1.cpu, base1.cpu, tests)
        note = f"{len(v1.failures)} bad run(s), see below" if v1.failures else ""
        rows.append(
            [
                v.name,
                f"{med1:.3f}",
                f"{wall_start:.3f}",
                f"{wall_per_test:,.0f}",
                f"{cpu_start:.3f}",
                f"{cpu_per_test:,.0f}",
                note,
            ]
        )
    return markdown_table(
        [
            "variant",
            "1-test median s",
            "startup s",
            "per-test µs",
            "startup CPU s",
            "per-test CPU µs",
            "notes",
        ],
        rows,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=1000, help="number of trivial tests (1000)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per variant (5)")
    parser.add_argument(
        "--peers",
        action="store_true",
        help=f"also time pytest-opentelemetry and pytest-otel (venv {PEER_VENV}, made if missing)",
    )
    parser.add_argument(
        "--no-startup",
        action="store_true",
        help="skip the 1-test suite runs that split the overhead into startup and per-test cost",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    options = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="taskctl-bench-overhead-"))
    suite, output_dir, pycache = tmp / "suite", tmp / "output", tmp / "pycache"
    suite1 = tmp / "suite-1"
    output_dir.mkdir()
    write_suite(suite, options.tests)
    write_suite(suite1, 1)
    etcd = EmbeddedEtcd(tmp / "etcd" / "data", port=free_port())
    receiver: Receiver | None = None
    started = time.monotonic()
    load_start = os.getloadavg()
    try:
        etcd.start()
        receiver = Receiver()
        base_env = clean_env(pycache)
        me = sys.executable
        up = ["--taskctl-etcd", etcd.endpoint]
        variants = [
            Variant("bare", me, ["-p", "no:taskctl"], base_env),
            Variant(
                "taskctl (etcd down)",
                me,
                ["--taskctl-etcd", "127.0.0.1:1"],
                base_env,
                run_id=True,
                note="control off, spans to traces.jsonl",
            ),
            Variant(
                "taskctl (etcd up)", me, up, base_env, run_id=True, note="spans to traces.jsonl"
            ),
            Variant(
                "taskctl + OTLP",
                me,
                up,
                {**base_env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint},
                run_id=True,
                receiver=True,
                note="file + OTLP/gRPC to an in-process receiver",
            ),
            Variant(
                "taskctl + OTLP, detail test",
                me,
                [*up, "--taskctl-span-detail", "test"],
                {**base_env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint},
                run_id=True,
                receiver=True,
                note="as above, one span per test (--taskctl-span-detail test)",
            ),
            Variant(
                "taskctl, collector down",
                me,
                up,
                {**base_env, "OTEL_EXPORTER_OTLP_ENDPOINT": CLOSED_ENDPOINT},
                run_id=True,
                note=f"OTLP endpoint {CLOSED_ENDPOINT} (closed)",
            ),
        ]
        peer_note = ""
        if options.peers:
            peer_python, peer_note = ensure_peer_venv()
            if peer_python is None:
                for name in ("pytest-opentelemetry", "pytest-otel"):
                    variants.append(Variant(name, "", [], {}, unavailable=peer_note))
            else:
                variants += peer_variants(peer_python, peer_env(base_env), receiver)
        counter = [0]
        runnable = [v for v in variants if not v.unavailable]
        # Warm-up, not timed: bytecode goes to a temp PYTHONPYCACHEPREFIX, so every
        # variant's imports are compiled once before the clock starts.
        for v in runnable:
            if v.runs is None and v.name != "taskctl, collector down":  # same imports as OTLP
                run_once(v, suite, options.tests, counter, receiver, output_dir)
                v.times.clear()
                v.cpu.clear()
                v.failures.clear()
        for round_index in range(options.runs):
            for v in runnable:
                if v.runs is None:
                    run_once(v, suite, options.tests, counter, receiver, output_dir)
            print(
                f"round {round_index + 1}/{options.runs} done at "
                f"{time.monotonic() - started:.0f} s",
                file=sys.stderr,
            )
        # Single runs (the peers with no collector) wait out their exporters' retry
        # schedules, asleep: run them side by side, after the timed rounds.
        single = [v for v in runnable if v.runs is not None]
        with futures.ThreadPoolExecutor(max_workers=max(1, len(single))) as pool:
            for job in [
                pool.submit(run_once, v, suite, options.tests, counter, None, output_dir)
                for v in single
            ]:
                job.result()

        # The same variants on a 1-test suite: what is paid once per session
        # (imports, etcd connect, exporter start and shutdown) versus per test.
        small: list[tuple[Variant, Variant]] = []
        if not options.no_startup:
            for v in runnable:
                if v.runs is None and not v.name.endswith("collector down"):
                    small.append((v, replace(v, times=[], cpu=[], failures=[], received=None)))
            for _round in range(options.runs):
                for _, v1 in small:
                    run_once(v1, suite1, 1, counter, None, output_dir)
            print(f"1-test runs done at {time.monotonic() - started:.0f} s", file=sys.stderr)

        last = next(v for v in variants if v.name == "taskctl (etcd up)")
        run_dir = suite / "logs" / last.last_run_id
        lines, spans, sessions = count_spans(run_dir / "traces.jsonl")
        with open(run_dir / "pytest.log", encoding="utf-8") as handle:
            log_lines = sum(1 for _ in handle)
        status = etcdctl(
            etcd_binary("etcdctl"),
            etcd.endpoint,
            "get",
            f"/pytest-taskctl/runs/{last.last_run_id}/status",
            "--print-value-only",
        ).strip()

        print(
            f"## pytest-taskctl overhead: {options.tests} trivial tests, "
            f"median of {options.runs} interleaved runs\n"
        )
        print(f"Machine: {machine_line()}; {code_version()}.")
        if options.peers:
            print(f"Peer venv {PEER_VENV}: {peer_note}.")
        print()
        print(main_table(variants, options.tests))
        print(
            "\n`overhead µs/test` = (median wall time − baseline median) / N; `CPU µs/test` = "
            "the same with the pytest process's user + system CPU time (all its threads, so "
            "background export is included; etcd and the OTLP receiver are not). "
            "Load average at the start: {:.2f} {:.2f} {:.2f}.\n".format(*load_start)
        )
        if small:
            print(
                "### Startup versus per-test cost\n\n"
                f"Each variant also ran {options.runs} time(s) on a 1-test suite. "
                "`startup s` is its median minus the baseline's on that suite (paid once per "
                "session); `per-test µs` is the rest of the overhead spread over the other "
                f"tests: ((Δ at {options.tests} tests) − (Δ at 1 test)) / {options.tests - 1}. "
                "The CPU columns do the same with the pytest process's user + system time.\n"
            )
            print(startup_table(small, options.tests))
            print()
        print(f"### Sanity: the last `taskctl (etcd up)` run ({last.last_run_id})\n")
        sanity: list[list[object]] = [
            ["traces.jsonl lines (export batches)", lines, ""],
            [
                "spans in traces.jsonl",
                spans,
                f"expected {4 * options.tests + 1} or a few more "
                "(test, setup, call, teardown per test; session; fixtures set up)",
            ],
            ["`pytest session` spans", sessions, "expected 1"],
            ["pytest.log lines", log_lines, ""],
            ["etcd status key", status, "expected COMPLETED"],
        ]
        for v in variants:
            if v.received is not None:
                expected = ""
                if v.name.endswith("detail test"):
                    expected = f"expected {options.tests + 1} spans"
                elif v.name.startswith("taskctl"):
                    expected = f"expected {4 * options.tests + 1} spans or a few more"
                sanity.append(
                    [
                        f"spans / log records at the receiver, last `{v.name}` run",
                        f"{v.received[0]} / {v.received[1]}",
                        expected,
                    ]
                )
        print(markdown_table(["what", "value", "check"], sanity))
        bad = problems(runnable) + problems([v1 for _, v1 in small], " (1-test suite)")
        return report_end(bad, started)
    finally:
        if receiver is not None:
            receiver.stop()
        etcd.stop()
        if options.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
