"""A real pytest run in a subprocess, with tests that announce themselves.

Inner tests append ``start <name>`` / ``end <name>`` to a stamp file, and a
test named in ``gates`` waits until the outer test releases it -- so the outer
test can act (pause, cancel, kill etcd) while a known test is in flight,
without sleeping. After writing a flag, wait until the run has taken it in
(:meth:`RunningSuite.wait_seen`) before releasing a gate.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from .conftest import INNER_INI, stop_process, wait_for

TEST_TEMPLATE = """
def test_{name}():
    _stamp("start {name}")
    _wait_gate("{name}")
    _stamp("end {name}")
"""

HEADER = """
import os, time
from pathlib import Path

def _stamp(text):
    with open(os.environ["STAMPS"], "a") as f:
        f.write(text + "\\n")

def _wait_gate(name):
    gate = Path(os.environ["GATES"]) / name
    if name not in os.environ["GATED"].split(","):
        return
    deadline = time.monotonic() + 60
    while not gate.exists():
        assert time.monotonic() < deadline, "gate never opened"
        time.sleep(0.005)
"""


class RunningSuite:
    def __init__(
        self,
        directory: Path,
        env: dict[str, str],
        names: list[str],
        gates: list[str],
        run_id: str,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.directory = directory
        self.run_id = run_id
        self.stamps = directory / "stamps.txt"
        self.gates = directory / "gates"
        self.gates.mkdir(parents=True, exist_ok=True)
        (directory / "pytest.ini").write_text(INNER_INI)
        (directory / "test_suite.py").write_text(
            HEADER + "".join(TEST_TEMPLATE.format(name=name) for name in names)
        )
        self.env = {
            **env,
            "STAMPS": str(self.stamps),
            "GATES": str(self.gates),
            "GATED": ",".join(gates),
        }
        self.args = [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-v",
            "--run-id", run_id, *extra_args, "test_suite.py",
        ]  # fmt: skip
        self.process: subprocess.Popen[str] | None = None
        self.output = ""

    def start(self) -> RunningSuite:
        self.process = subprocess.Popen(
            self.args,
            cwd=self.directory,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return self

    def lines(self) -> list[str]:
        return self.stamps.read_text().splitlines() if self.stamps.exists() else []

    def started(self, name: str) -> bool:
        return f"start {name}" in self.lines()

    def ended(self, name: str) -> bool:
        return f"end {name}" in self.lines()

    def wait_started(self, name: str, timeout: float = 20) -> None:
        wait_for(lambda: self.started(name) or self._exited(), timeout)
        assert self.started(name), self.finish(5)

    def wait_seen(self, request: str, count: int = 1, timeout: float = 20) -> None:
        """Wait until the run took in a flag written to etcd (``pause``, ``resume``, ``cancel``).

        etcdctl returns when etcd has the flag; the run's watch thread gets it
        a little later (much later on a loaded machine). The plugin logs
        ``<request> requested through etcd`` once a process's view holds it
        -- with xdist, once in each process -- and from then on acts on it.
        Release a gated test only after this, or the next tests may start first.
        """
        line = f"{request} requested through etcd"
        wait_for(lambda: self.log_text.count(line) >= count or self._exited(), timeout)
        assert self.log_text.count(line) >= count, self.finish(5)

    def release(self, name: str) -> None:
        (self.gates / name).touch()

    def _exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def finish(self, timeout: float = 60) -> str:
        assert self.process is not None
        try:
            self.output, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.output, _ = self.process.communicate()
            raise AssertionError("pytest run did not finish:\n" + self.output) from None
        return self.output

    def kill(self) -> None:
        """End the run if it is still going (a failed test must not leave it behind)."""
        if self.process is not None:
            stop_process(self.process)
            if self.process.stdout is not None:  # else a ResourceWarning fails a later test
                self.process.stdout.close()

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    @property
    def log_text(self) -> str:
        path = self.directory / "logs" / self.run_id / "pytest.log"
        return path.read_text(encoding="utf-8") if path.exists() else ""


def suite_env(base: dict[str, str]) -> dict[str, str]:
    return {**base, "PYTHONUNBUFFERED": "1", "PATH": os.environ.get("PATH", "")}
