"""Parity benchmark: popular projects' own test suites, without and with pytest-taskctl.

    .venv/bin/python benchmarks/real_suites.py [--projects click,attrs,pluggy]
        [--no-thread] [--threads 4] [--json] [--work-dir DIR] [--timeout 600] [--keep]

For each project it downloads the pinned sdist (which ships the tests) from the
package index with ``pip download --no-deps --no-binary :all:`` into a scratch
directory (``--work-dir``, default a directory under /tmp; nothing is ever
written into this repository), creates a venv per project with the project,
its test requirements and pytest-taskctl (installed from a copy of this
repository's ``src/``, reinstalled on every run so it is the code under test),
starts a private etcd and an in-process OTLP/gRPC receiver, and runs the suite:

* ``bare``: ``-p no:taskctl`` (how users turn the plugin off);
* ``taskctl``: default options, ``--taskctl-etcd`` at the private etcd, a fresh
  ``--run-id``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` at the receiver;
* ``taskctl --thread 4``: the same plus ``--thread 4`` (skipped with ``--no-thread``).

An untimed ``--collect-only`` run first compiles and rewrites the test modules,
so no variant pays for that. Every variant loads a tiny recorder plugin
(``-p taskctl_bench_recorder``, written into the scratch venv) that keeps each
node id's outcome, the crash line of failures, and every warning pytest
recorded. The report lists, per project, the outcome differences node id by
node id against ``bare``, the warnings only one side saw, and the wall and CPU
time per test (CPU of the pytest process tree: ``getrusage(RUSAGE_CHILDREN)``
deltas). Exit code 1 when a download, install or run failed or timed out, or
when outcomes differ.
"""

from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # before any import that could write __pycache__ here

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from _common import (  # noqa: E402
    Receiver,
    clean_env,
    code_version,
    kill_group,
    machine_line,
    markdown_table,
    report_end,
)

from pytest_taskctl.etcd.server import EmbeddedEtcd, free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PYTEST_PIN = "pytest==9.2.0"
DOWNLOAD_TIMEOUT = 300.0
INSTALL_TIMEOUT = 900.0
RUN_TIMEOUT = 600.0


@dataclass(frozen=True)
class Project:
    name: str
    version: str
    module: str  # imported to check the install
    deps: tuple[str, ...]  # test requirements, pinned
    args: tuple[str, ...]  # pytest arguments, run from the unpacked sdist
    note: str = ""


PROJECTS: dict[str, Project] = {
    "click": Project("click", "8.5.1", "click", (PYTEST_PIN,), ("tests",)),
    "attrs": Project(
        "attrs",
        "26.1.0",
        "attr",
        (PYTEST_PIN, "hypothesis==6.170.17", "pympler==1.1", "cloudpickle==3.1.3"),
        # A fixed seed: every variant runs the same examples. Unseeded, the
        # amount of Hypothesis work differs by several percent from run to run
        # (~1 s of the ~12 s CPU), which reads as plugin overhead.
        ("tests", "--hypothesis-seed=0"),
        note="its `tests` dependency group without pytest-xdist; the mypy/pyright "
        "checks (pytest-mypy-plugins, pyright) are not installed; "
        "`--hypothesis-seed=0` so that every variant runs the same examples",
    ),
    "pluggy": Project(
        "pluggy",
        "1.7.0",
        "pluggy",
        (PYTEST_PIN,),
        ("testing", "--ignore=testing/benchmark.py"),
        note="testing/benchmark.py needs pytest-benchmark and is ignored",
    ),
}

RECORDER_NAME = "taskctl_bench_recorder"
RECORDER = '''"""Outcome recorder of pytest-taskctl's benchmarks/real_suites.py (-p)."""

import json

import pytest

_outcomes = {}
_messages = {}
_warnings = []
_collect_errors = {}


def pytest_addoption(parser):
    parser.addoption("--bench-record", default=None, help="write outcomes as JSON here")


def _crash(report):
    longrepr = report.longrepr
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message)[:500]
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])[:500]
    return str(longrepr)[-500:] if longrepr else ""


def pytest_runtest_logreport(report):
    nodeid = report.nodeid
    xfail = hasattr(report, "wasxfail")
    if report.when == "call":
        if report.failed:
            outcome = "failed"
        elif report.skipped:
            outcome = "xfailed" if xfail else "skipped"
        else:
            outcome = "xpassed" if xfail else "passed"
    elif report.failed:
        if report.when == "setup":
            outcome = "error"
        else:
            outcome = _outcomes.get(nodeid, "?") + "+teardown-error"
    elif report.skipped:
        outcome = "xfailed" if xfail else "skipped"
    else:
        return
    _outcomes[nodeid] = outcome
    if report.failed:
        _messages[nodeid] = _crash(report)


def pytest_collectreport(report):
    if report.failed:
        _collect_errors[report.nodeid] = _crash(report)


def pytest_warning_recorded(warning_message, when, nodeid, location):
    text = str(warning_message.message).strip().splitlines()
    _warnings.append(
        [nodeid, when, warning_message.category.__name__, text[0][:300] if text else ""]
    )


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    path = session.config.getoption("bench_record")
    if not path:
        return
    data = {
        "exitstatus": int(exitstatus),
        "taskctl_active": session.config.pluginmanager.has_plugin("taskctl"),
        "outcomes": _outcomes,
        "messages": _messages,
        "warnings": _warnings,
        "collect_errors": _collect_errors,
    }
    with open(path, "w", encoding="utf-8") as out:
        json.dump(data, out)
'''


class SetupError(Exception):
    """A download, unpack or install step failed; the message says which and why."""


def tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_step(what: str, cmd: list[str], timeout: float, **kwargs: object) -> str:
    """Run a setup command; a failure or timeout is a :class:`SetupError` naming ``what``."""
    try:
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,  # type: ignore[call-overload]
        )
    except subprocess.TimeoutExpired:
        raise SetupError(f"{what}: no result within {timeout:.0f} s ({' '.join(cmd)})") from None
    except OSError as error:
        raise SetupError(f"{what}: {error}") from None
    if result.returncode != 0:
        raise SetupError(
            f"{what} failed (exit {result.returncode}): {' '.join(cmd)}\n"
            + tail(result.stderr or result.stdout)
        )
    return str(result.stdout)


# -- setup -------------------------------------------------------------------------


def download(project: Project, work: Path) -> Path:
    """The project's sdist from the package index (cached in ``work/sdists``)."""
    target = work / "sdists"
    target.mkdir(parents=True, exist_ok=True)

    def found() -> Path | None:
        stem = f"{project.name}-{project.version}".lower()
        for path in sorted(target.iterdir()):
            if path.name.lower().startswith(stem) and path.name.endswith((".tar.gz", ".zip")):
                return path
        return None

    cached = found()
    if cached is not None:
        return cached
    spec = f"{project.name}=={project.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-d", str(target), spec]  # fmt: skip
    run_step(
        f"could not download the sdist of {spec} from the package index", cmd, DOWNLOAD_TIMEOUT
    )
    path = found()
    if path is None:
        raise SetupError(f"pip downloaded no sdist for {spec} into {target}")
    return path


def unpack(sdist: Path, work: Path) -> Path:
    """A fresh copy of the sdist's tree (no cache or database from earlier runs)."""
    root = work / "src"
    root.mkdir(parents=True, exist_ok=True)
    name = sdist.name.removesuffix(".tar.gz").removesuffix(".zip")
    shutil.rmtree(root / name, ignore_errors=True)
    try:
        with tarfile.open(sdist) as archive:
            if hasattr(tarfile, "data_filter"):
                archive.extractall(root, filter="data")
            else:  # pragma: no cover - Python before 3.11.4
                archive.extractall(root)  # noqa: S202
    except (tarfile.TarError, OSError) as error:
        raise SetupError(f"could not unpack {sdist}: {error}") from None
    tree = root / name
    if not tree.is_dir():
        raise SetupError(f"{sdist} did not unpack into {tree}")
    return tree


def plugin_copy(work: Path) -> Path:
    """This repository's plugin, copied so pip's in-tree build writes nothing here."""
    target = work / "plugin"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, target / name)
    shutil.copytree(
        REPO / "src", target / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    return target


def venv_python(project: Project, sdist: Path, plugin: Path, work: Path) -> Path:
    """A venv with the project, its test requirements and the plugin; reused across runs.

    The venv's name hashes the pins and the plugin's pyproject.toml (its
    dependencies), so changing either makes a new one. The plugin itself is
    reinstalled (``--no-deps --force-reinstall``) every time.
    """
    key = hashlib.sha256(
        "\n".join([sys.version, project.name, project.version, *project.deps]).encode()
        + (plugin / "pyproject.toml").read_bytes()
    ).hexdigest()[:10]
    venv = work / "venvs" / f"{project.name}-{project.version}-{key}"
    python = venv / "bin" / "python"
    ready = venv / ".ready"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "install", "-q"]
    if not ready.exists():
        shutil.rmtree(venv, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        run_step(
            f"could not create a venv for {project.name}", [base, "-m", "venv", str(venv)], 120
        )
        run_step(
            f"could not install {project.name} {project.version}, its test requirements "
            "and pytest-taskctl",
            [*pip, str(sdist), *project.deps, str(plugin)],
            INSTALL_TIMEOUT,
        )
        ready.write_text("ok\n")
    else:
        run_step(
            "could not reinstall pytest-taskctl from this repository",
            [*pip, "--no-deps", "--force-reinstall", str(plugin)],
            INSTALL_TIMEOUT,
        )
    purelib = run_step(
        "could not ask the venv for its site-packages",
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        60,
    ).strip()
    Path(purelib, f"{RECORDER_NAME}.py").write_text(RECORDER)
    return python


def versions(python: Path, project: Project) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json; "
        f"import {project.module}, pytest_taskctl; "
        "print(json.dumps({n: m.version(n) for n in "
        f"({project.name!r}, 'pytest', 'pytest-taskctl', 'opentelemetry-sdk')}}))"
    )
    out = run_step(f"the {project.name} venv is unusable", [str(python), "-c", code], 120)
    return dict(json.loads(out))


# -- runs --------------------------------------------------------------------------


@dataclass
class Run:
    variant: str
    exit_code: int | None = None
    wall: float = 0.0
    cpu: float = 0.0  # user + system s of the pytest process and everything it waited for
    timed_out: bool = False
    record: dict[str, object] = field(default_factory=dict)
    spans: int = 0
    log_records: int = 0
    output: str = ""

    @property
    def outcomes(self) -> dict[str, str]:
        return dict(self.record.get("outcomes", {}))  # type: ignore[call-overload]

    @property
    def messages(self) -> dict[str, str]:
        return dict(self.record.get("messages", {}))  # type: ignore[call-overload]

    @property
    def warnings(self) -> list[list[str]]:
        return list(self.record.get("warnings", []))  # type: ignore[call-overload]


def pytest_cmd(python: Path, *extra: str) -> list[str]:
    return [str(python), "-m", "pytest", "-p", "no:cacheprovider", *extra]


def timed_run(
    variant: str, cmd: list[str], cwd: Path, env: dict[str, str], out_path: Path, timeout: float
) -> Run:
    run = Run(variant, output=str(out_path))
    shutil.rmtree(cwd / ".hypothesis", ignore_errors=True)  # every run starts without examples
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out_path, "wb") as out:
        start = time.perf_counter()
        process = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            run.exit_code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            run.timed_out = True
            kill_group(process)
        run.wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    run.cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return run


def run_project(
    project: Project,
    args: argparse.Namespace,
    work: Path,
    plugin: Path,
    etcd: EmbeddedEtcd,
    receiver: Receiver,
    stamp: str,
) -> dict[str, object]:
    sdist = download(project, work)
    tree = unpack(sdist, work)
    python = venv_python(project, sdist, plugin, work)
    installed = versions(python, project)
    out_dir = work / "out" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    env = clean_env()
    warm = subprocess.run(
        pytest_cmd(python, "-p", "no:taskctl", "--collect-only", "-q", *project.args),
        cwd=tree, env=env, capture_output=True, text=True, timeout=args.timeout,
    )  # fmt: skip
    if warm.returncode not in (0, 5):
        raise SetupError(
            f"{project.name}: collection failed without the plugin (exit {warm.returncode})\n"
            + tail(warm.stdout + warm.stderr)
        )
    variants: list[tuple[str, list[str], dict[str, str]]] = [("bare", ["-p", "no:taskctl"], env)]
    plugin_env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
    plugin_args = ["--taskctl-etcd", etcd.endpoint, "--taskctl-log-dir", str(work / "logs")]
    variants.append(("taskctl", plugin_args, plugin_env))
    if not args.no_thread:
        variants.append((f"taskctl --thread {args.threads}",
                         [*plugin_args, "--thread", str(args.threads)], plugin_env))  # fmt: skip
    runs: list[Run] = []
    for index, (name, extra, run_env) in enumerate(variants, 1):
        record = out_dir / f"{project.name}-{index}.json"
        cmd = pytest_cmd(python, "-q", "-p", RECORDER_NAME, "--bench-record", str(record), *extra)
        if name != "bare":
            cmd += ["--run-id", f"realsuites-{stamp}-{project.name}-{index}"]
        receiver.reset()
        print(f"  {project.name}: {name} ...", file=sys.stderr, flush=True)
        run = timed_run(name, [*cmd, *project.args], tree, run_env,
                        out_dir / f"{project.name}-{index}.txt", args.timeout)  # fmt: skip
        time.sleep(0.2)  # the last export calls have been answered when the process ended
        run.spans, run.log_records = receiver.counts()
        if record.exists():
            run.record = json.loads(record.read_text(encoding="utf-8"))
        runs.append(run)
    return {"project": project, "versions": installed, "runs": runs}


# -- report ------------------------------------------------------------------------


def problems_of(project: Project, runs: list[Run]) -> list[str]:
    bad = []
    for run in runs:
        label = f"{project.name} / {run.variant}"
        if run.timed_out:
            bad.append(f"{label}: killed at the run timeout (--timeout), see {run.output}")
        elif not run.record:
            bad.append(f"{label}: exit {run.exit_code}, no outcomes recorded ({run.output})")
        elif run.record.get("taskctl_active") != (run.variant != "bare"):
            bad.append(f"{label}: plugin active = {run.record.get('taskctl_active')}")
        if run.record.get("collect_errors"):
            bad.append(f"{label}: collection errors {sorted(run.record['collect_errors'])}")  # type: ignore[call-overload]
    return bad


def differences(base: Run, other: Run) -> list[tuple[str, str, str, str]]:
    """(node id, outcome in base, outcome in other, crash line in other) where they differ."""
    a, b = base.outcomes, other.outcomes
    rows = []
    for nodeid in sorted(set(a) | set(b)):
        if a.get(nodeid) != b.get(nodeid):
            message = other.messages.get(nodeid) or base.messages.get(nodeid, "")
            rows.append((nodeid, a.get(nodeid, "absent"), b.get(nodeid, "absent"), message))
    return rows


def warning_differences(base: Run, other: Run) -> list[tuple[str, str, int, int]]:
    """(category, message, count in base, count in other) for messages whose counts differ."""
    a = Counter((w[2], w[3]) for w in base.warnings)
    b = Counter((w[2], w[3]) for w in other.warnings)
    return [(cat, msg, a[(cat, msg)], b[(cat, msg)])
            for cat, msg in sorted(set(a) | set(b)) if a[(cat, msg)] != b[(cat, msg)]]  # fmt: skip


def counts(run: Run) -> Counter[str]:
    return Counter(outcome.split("+")[0] for outcome in run.outcomes.values())


def one_line(text: str, width: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def project_report(result: dict[str, object]) -> str:
    project: Project = result["project"]  # type: ignore[assignment]
    runs: list[Run] = result["runs"]  # type: ignore[assignment]
    installed: dict[str, str] = result["versions"]  # type: ignore[assignment]
    base = runs[0]
    tests = max(len(run.outcomes) for run in runs) or 1
    lines = [
        f"### {project.name} {project.version}: {len(base.outcomes)} tests",
        "",
        "pytest " + installed.get("pytest", "?") + ", `pytest " + " ".join(project.args) + "`"
        + (f"; {project.note}" if project.note else "") + ".",
        "",
    ]  # fmt: skip
    rows = []
    for run in runs:
        c = counts(run)
        diff = "—" if run is base else str(len(differences(base, run)))
        rows.append([
            f"`{run.variant}`",
            "timeout" if run.timed_out else str(run.exit_code),
            c["passed"], c["failed"], c["error"], c["skipped"], c["xfailed"] + c["xpassed"],
            len(run.warnings),
            diff,
            f"{run.wall:.2f}",
            f"{run.wall / tests * 1e6:,.0f}",
            f"{run.cpu / tests * 1e6:,.0f}",
            "—" if run is base else f"{(run.wall - base.wall) / tests * 1e6:+,.0f}",
            "—" if run is base else f"{(run.cpu - base.cpu) / tests * 1e6:+,.0f}",
            "—" if run is base else f"{run.spans} / {run.log_records}",
        ])  # fmt: skip
    headers = ["variant", "exit", "passed", "failed", "errors", "skipped", "xfail/xpass",
               "warnings", "outcome diffs", "wall s", "wall µs/test", "CPU µs/test",
               "Δ wall µs/test", "Δ CPU µs/test", "OTLP spans / logs"]  # fmt: skip
    lines.append(markdown_table(headers, rows))
    for run in runs[1:]:
        diffs = differences(base, run)
        warns = warning_differences(base, run)
        lines += [
            "",
            f"Outcome differences, `{run.variant}` against `bare`: {len(diffs) or 'none'}",
        ]
        lines += [f"- `{nodeid}`: {was} → {now}" + (f" — {one_line(msg)}" if msg else "")
                  for nodeid, was, now, msg in diffs]  # fmt: skip
        if warns:
            lines += ["", f"Warnings whose count differs, `{run.variant}` against `bare`:"]
            lines += [
                f"- {cat}: {one_line(msg, 200)} ({was} → {now})" for cat, msg, was, now in warns
            ]
    return "\n".join(lines)


def as_json(result: dict[str, object]) -> dict[str, object]:
    project: Project = result["project"]  # type: ignore[assignment]
    runs: list[Run] = result["runs"]  # type: ignore[assignment]
    base = runs[0]
    tests = max(len(run.outcomes) for run in runs) or 1
    return {
        "project": project.name,
        "version": project.version,
        "versions": result["versions"],
        "args": list(project.args),
        "tests": len(base.outcomes),
        "runs": [
            {
                "variant": run.variant,
                "exit_code": run.exit_code,
                "timed_out": run.timed_out,
                "counts": dict(counts(run)),
                "warnings": len(run.warnings),
                "wall_s": round(run.wall, 3),
                "cpu_s": round(run.cpu, 3),
                "wall_us_per_test": round(run.wall / tests * 1e6),
                "cpu_us_per_test": round(run.cpu / tests * 1e6),
                "otlp_spans": run.spans,
                "otlp_log_records": run.log_records,
                "output": run.output,
                "differences": [
                    {"nodeid": n, "bare": was, "outcome": now, "message": msg}
                    for n, was, now, msg in differences(base, run)
                ],
                "warning_differences": [
                    {"category": cat, "message": msg, "bare": was, "count": now}
                    for cat, msg, was, now in warning_differences(base, run)
                ],
            }
            for run in runs
        ],
    }


# -- main --------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--projects", default=",".join(PROJECTS), help="comma-separated (default: all of them)")
    add("--no-thread", action="store_true", help="skip the --thread run")
    add("--threads", type=int, default=4, help="N of the --thread run (4)")
    add("--json", action="store_true", help="print JSON instead of Markdown")
    add("--work-dir", type=Path, default=Path("/tmp/taskctl-real-suites"),
        help="sdists, venvs, unpacked trees, outputs (default %(default)s)")  # fmt: skip
    add("--timeout", type=float, default=RUN_TIMEOUT,
        help="seconds one pytest run may take before it is killed (%(default)s)")  # fmt: skip
    add("--keep", action="store_true",
        help="keep unpacked trees and logs (sdists, venvs, outputs are kept anyway)")  # fmt: skip
    args = parser.parse_args()
    names = [n.strip() for n in args.projects.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROJECTS]
    if unknown or not names:
        parser.error(f"unknown project(s) {unknown}; choose from {', '.join(PROJECTS)}")
    if args.threads < 2 and not args.no_thread:
        parser.error("--threads must be 2 or more (or use --no-thread)")

    started = time.monotonic()
    work: Path = args.work_dir.resolve()
    if work == REPO or REPO in work.parents:
        parser.error("--work-dir must be outside the repository")
    work.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    bad: list[str] = []
    results: list[dict[str, object]] = []
    etcd = EmbeddedEtcd(work / "etcd" / stamp / "data", port=free_port())
    receiver = Receiver()
    try:
        plugin = plugin_copy(work)
        etcd.start()
        for name in names:
            project = PROJECTS[name]
            print(f"{project.name} {project.version}:", file=sys.stderr, flush=True)
            try:
                result = run_project(project, args, work, plugin, etcd, receiver, stamp)
            except (SetupError, subprocess.TimeoutExpired) as error:
                bad.append(f"{project.name}: {error}")
                print(f"  {error}", file=sys.stderr)
                continue
            runs: list[Run] = result["runs"]  # type: ignore[assignment]
            bad += problems_of(project, runs)
            for run in runs[1:]:
                if run.record and runs[0].record and differences(runs[0], run):
                    bad.append(f"{project.name} / {run.variant}: outcomes differ from bare")
            results.append(result)
    finally:
        receiver.stop()
        etcd.stop()
        if not args.keep:
            for sub in ("src", "logs", "etcd"):
                shutil.rmtree(work / sub, ignore_errors=True)

    if args.json:
        print(json.dumps({
            "machine": machine_line(), "code": code_version(),
            "projects": [as_json(r) for r in results], "problems": bad,
        }, indent=2))  # fmt: skip
        return 1 if bad else 0
    print("## Real suites: outcomes and time without and with pytest-taskctl\n")
    print(f"Machine: {machine_line()}; {code_version()}. Work dir {work}.\n")
    print(
        "`wall µs/test` and `CPU µs/test` = the whole pytest process (start-up included) "
        "divided by the number of tests; CPU is user + system time of the process tree "
        "(`getrusage(RUSAGE_CHILDREN)` delta). `Δ` = against `bare`. One run each, "
        "after an untimed `--collect-only` warm-up.\n"
    )
    for result in results:
        print(project_report(result))
        print()
    if not args.keep:
        print(f"Outputs of each run were in {work / 'out'} (kept).")
    return report_end(bad, started)


if __name__ == "__main__":
    sys.exit(main())
