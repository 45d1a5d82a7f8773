"""Compatibility matrix (`make compat`): the core behaviour under other pytest and etcd versions.

Sessions (``nox -l`` lists them):

* ``pytest-8.0``, ``pytest-8.4``, ``pytest-9``: the oldest supported pytest,
  the latest 8.4.x and the latest 9.x, each in its own venv under ``.nox``;
* ``etcd-3.4``: the latest pytest against etcd 3.4 (Debian's ``etcd-server``,
  ``/usr/bin/etcd``), installed with apt-get when running as root; skipped
  with a message saying why where it cannot be installed.

Each runs :data:`CORE` (store, control, resume, CLI, telemetry basics,
groups with ``--thread``), a few minutes at most on 2 cores. Venvs are
reused between runs (``reuse_venv``); ``nox -s NAME --reinstall`` rebuilds.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True
#: `make test` already runs the whole suite on the latest pytest 9; `nox -s pytest-9` on demand.
nox.options.sessions = ["pytest-8.0", "pytest-8.4", "etcd-3.4"]

#: The "core behaviour" subset: whole modules where they are quick, ``-k`` where not.
CORE = [
    "tests/test_store.py",
    "tests/test_control.py",
    "tests/test_resume.py",
    "tests/test_cli.py",
    "tests/test_groups.py",
    "tests/test_telemetry.py",
    "tests/test_faults_helpers.py",
    # pytest-rerunfailures resolves to an older release beside pytest 8.0 (16.1, which
    # logs no teardown after a rerun report): the run must still record each test once.
    "tests/test_reruns.py",
]

ETCD_34 = "/usr/bin/etcd"


def _install(session: nox.Session, pytest_spec: str) -> None:
    session.install("-e", ".[test]", pytest_spec)
    session.run("python", "-c", "import pytest; print('pytest', pytest.__version__)", silent=False)


def _core(session: nox.Session, env: dict[str, str] | None = None) -> None:
    args = session.posargs or ["-q", "-p", "no:cacheprovider", *CORE]
    session.run("pytest", *args, env=env or {})


@nox.session(name="pytest-8.0")
def pytest_80(session: nox.Session) -> None:
    """The oldest supported pytest (8.0.x)."""
    _install(session, "pytest==8.0.*")
    _core(session)


@nox.session(name="pytest-8.4")
def pytest_84(session: nox.Session) -> None:
    """The latest pytest 8 (8.4.x)."""
    _install(session, "pytest==8.4.*")
    _core(session)


@nox.session(name="pytest-9")
def pytest_9(session: nox.Session) -> None:
    """The latest pytest 9.x."""
    _install(session, "pytest>=9,<10")
    _core(session)


def _etcd_34_available(session: nox.Session) -> bool:
    if os.path.exists(ETCD_34):
        return True
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    session.log("installing Debian's etcd-server (etcd 3.4) with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT, "env": env}
    subprocess.run(["apt-get", "update", "-qq"], check=False, **quiet)  # type: ignore[call-overload]
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=300", "etcd-server"],
        check=False,
        **quiet,  # type: ignore[arg-type]
    )
    return os.path.exists(ETCD_34)


@nox.session(name="etcd-3.4")
def etcd_34(session: nox.Session) -> None:
    """The latest pytest against etcd 3.4 (Debian's etcd-server)."""
    if not _etcd_34_available(session):
        session.skip(
            f"etcd 3.4 not available: {ETCD_34} is missing and Debian's etcd-server package "
            "cannot be installed here (needs root and apt-get)"
        )
    _install(session, "pytest>=9,<10")
    version = subprocess.run([ETCD_34, "--version"], capture_output=True, text=True).stdout
    session.log(version.strip().replace("\n", "; "))
    _core(session, env={"TASKCTL_TEST_ETCD_BINARY": ETCD_34})
