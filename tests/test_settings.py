"""Run ids, endpoints and options: bad input is a usage error and writes nothing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_taskctl.etcd.server import EmbeddedEtcd, etcd_binary, free_port
from pytest_taskctl.etcd.settings import EtcdSettings, SettingError

from .conftest import INNER_INI, Etcdctl


@pytest.mark.parametrize("bad", ["../x", "a/b", "with space", "-dash-first", "x" * 129, "ü"])
def test_invalid_run_id_option_is_a_usage_error(
    ptr: pytest.Pytester, etcdctl: Etcdctl, prefix: str, bad: str
) -> None:
    ptr.makepyfile("def test_a(): pass\n")
    result = ptr.runpytest(f"--run-id={bad}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: invalid run id {bad!r}: a run id must match *(from --run-id)"]
    )
    assert not (ptr.path / "logs").exists()
    assert etcdctl("get", "--prefix", prefix, "--keys-only").strip() == ""


def test_empty_run_id_from_env_is_a_usage_error(
    ptr: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_RUN_ID", "")
    ptr.makepyfile("def test_a(): pass\n")
    result = ptr.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: invalid run id '': *(from PYTEST_RUN_ID environment variable)"]
    )
    assert not (ptr.path / "logs").exists()


def test_run_id_from_env_and_option_wins(
    ptr: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_RUN_ID", "from-env")
    ptr.makepyfile("def test_a(): pass\n")
    ptr.runpytest().assert_outcomes(passed=1)
    assert (ptr.path / "logs" / "from-env" / "pytest.log").exists()
    ptr.runpytest("--run-id", "from-option").assert_outcomes(passed=1)
    assert (ptr.path / "logs" / "from-option" / "pytest.log").exists()


def test_missing_run_id_is_generated_with_a_warning(
    ptr: pytest.Pytester, etcdctl: Etcdctl, prefix: str
) -> None:
    ptr.makepyfile("def test_a(): pass\n")
    result = ptr.runpytest()
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    line = result.stdout.re_match_lines(
        [r"taskctl: warning: no run id given; run id (\d{8}-\d{6}-[0-9a-f]{6}) "]
    )
    run_id = re.search(r"run id (\S+) \(generated", result.stdout.str()).group(1)  # type: ignore[union-attr]
    assert line is None
    assert (ptr.path / "logs" / run_id / "pytest.log").exists()
    assert etcdctl.get(f"{prefix}/runs/{run_id}/status") == "COMPLETED"


def test_disable_with_p_no(ptr: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_RUN_ID", "off")
    ptr.makepyfile("def test_a(): pass\n")
    result = ptr.runpytest("-p", "no:taskctl")
    result.assert_outcomes(passed=1)
    assert "taskctl" not in result.stdout.str()
    assert not (ptr.path / "logs").exists()


def test_help_does_not_connect_or_write(pytester: pytest.Pytester) -> None:
    pytester.makeini(INNER_INI)
    result = pytester.runpytest("--help", "--taskctl-etcd", "127.0.0.1:1")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        ["*--run-id=ID*", "*--taskctl-etcd=HOST:PORT*", "*--taskctl-trace-mode*"]
    )
    assert not (pytester.path / "logs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--taskctl-etcd", "http://"], "invalid etcd endpoint 'http://' from --taskctl-etcd"),
        (["--taskctl-etcd", "ftp://h:1"], "invalid etcd endpoint 'ftp://h:1'"),
        (
            ["--taskctl-etcd-user", "nopassword"],
            "etcd user from --taskctl-etcd-user must be 'user:password'",
        ),
        (["--taskctl-etcd-cacert", "/no/such/ca.pem"], "etcd cacert file not found"),
        (["--taskctl-log-level", "LOUD"], "invalid log level 'LOUD'"),
    ],
)
def test_bad_settings_are_usage_errors(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    pytester.makeini(INNER_INI)
    pytester.makepyfile("def test_a(): pass\n")
    result = pytester.runpytest("--run-id", "x", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()
    assert not (pytester.path / "logs").exists()


def test_endpoint_precedence_option_then_env_then_etcdctl_env() -> None:
    env = {"PYTEST_TASKCTL_ETCD": "a:1", "ETCDCTL_ENDPOINTS": "b:2,c:3"}
    assert EtcdSettings.resolve(endpoints="o:9", environ=env).describe() == "o:9"
    assert EtcdSettings.resolve(environ=env).describe() == "a:1"
    assert EtcdSettings.resolve(environ={"ETCDCTL_ENDPOINTS": "b:2,c:3"}).describe() == "b:2,c:3"
    assert EtcdSettings.resolve(environ={}).describe() == "127.0.0.1:2379"
    https = EtcdSettings.resolve(endpoints="https://etcd.example:2379", environ={})
    assert str(https.endpoints[0]) == "https://etcd.example:2379"


def test_password_never_in_description_or_repr() -> None:
    settings = EtcdSettings.resolve(endpoints="h:1", user="root:s3cret", environ={})
    assert settings.user == "root" and settings.password == "s3cret"
    assert "s3cret" not in settings.describe() and "s3cret" not in repr(settings)
    with pytest.raises(SettingError, match="PYTEST_TASKCTL_ETCD_USER environment variable"):
        EtcdSettings.resolve(environ={"PYTEST_TASKCTL_ETCD_USER": "root"})
    from_env = EtcdSettings.resolve(environ={"ETCDCTL_USER": "root", "ETCDCTL_PASSWORD": "pw"})
    assert (from_env.user, from_env.password) == ("root", "pw")


def test_etcd_auth_end_to_end(etcd_factory, pytester: pytest.Pytester, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """user:password like etcdctl; the password shows up nowhere."""
    server = etcd_factory()
    ctl = Etcdctl(server.endpoint)
    ctl("user", "add", "root", "--new-user-password", "Sup3r-secret", "--interactive=false")
    ctl("auth", "enable")
    pytester.makeini(INNER_INI)
    pytester.makepyfile("import logging\ndef test_a(): logging.getLogger('t').info('hi')\n")
    result = pytester.runpytest(
        "--run-id", "auth-1", "--taskctl-etcd", server.endpoint, "--taskctl-prefix", prefix,
        "--taskctl-etcd-user", "root:Sup3r-secret",
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    assert "etcd unreachable" not in result.stdout.str()
    authed = Etcdctl(server.endpoint)
    status = authed(
        "--user", "root:Sup3r-secret", "get", f"{prefix}/runs/auth-1/status", "--print-value-only"
    )
    assert status.strip() == "COMPLETED"
    meta = authed(
        "--user", "root:Sup3r-secret", "get", f"{prefix}/runs/auth-1/meta", "--print-value-only"
    )
    assert "root:***" in json.loads(meta)["argv"]
    log_text = (pytester.path / "logs" / "auth-1" / "pytest.log").read_text()
    for text in (result.stdout.str(), result.stderr.str(), meta, log_text):
        assert "Sup3r-secret" not in text

    wrong = pytester.runpytest(
        "--run-id", "auth-2", "--taskctl-etcd", server.endpoint, "--taskctl-etcd-user", "root:wrong"
    )
    wrong.assert_outcomes(passed=1)
    wrong.stdout.fnmatch_lines(
        ["taskctl: warning: etcd unreachable (*authentication as 'root' failed*"]
    )


def _make_certs(directory: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, with openssl."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, subject in (("server", "/CN=etcd"), ("client", "/O=pytest-taskctl")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
                "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-out", f"{name}.pem",
                "-extfile", "san.cnf")  # fmt: skip
    return {name: str(directory / name) for name in
            ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}  # fmt: skip


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_etcd_tls_with_client_certificate(
    tmp_path: Path, pytester: pytest.Pytester, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS like etcdctl; REQUESTS_CA_BUNDLE (set on many machines) must not replace our CA."""
    certs = _make_certs(tmp_path)
    server = EmbeddedEtcd(
        tmp_path / "etcd",
        port=free_port(),
        tls=(certs["server.pem"], certs["server.key"], certs["ca.pem"]),
    ).start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    try:
        pytester.makeini(INNER_INI)
        pytester.makepyfile("def test_a(): pass\n")
        # "--option=value": a bare path argument would move pytest's rootdir.
        result = pytester.runpytest(
            "--run-id", "tls-1", "--taskctl-prefix", prefix,
            "--taskctl-etcd", f"https://127.0.0.1:{server.port}",
            f"--taskctl-etcd-cacert={certs['ca.pem']}",
            f"--taskctl-etcd-cert={certs['client.pem']}",
            f"--taskctl-etcd-key={certs['client.key']}",
        )  # fmt: skip
        result.assert_outcomes(passed=1)
        assert "etcd unreachable" not in result.stdout.str()
        tls_ctl = [
            etcd_binary("etcdctl"), "--endpoints", f"https://127.0.0.1:{server.port}",
            "--cacert", certs["ca.pem"],
            "--cert", certs["client.pem"], "--key", certs["client.key"],
        ]  # fmt: skip
        status = subprocess.run(
            [*tls_ctl, "get", f"{prefix}/runs/tls-1/status", "--print-value-only"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert status.stdout.strip() == "COMPLETED"

        no_cert = pytester.runpytest(
            "--run-id", "tls-2", "--taskctl-etcd", f"https://127.0.0.1:{server.port}",
            f"--taskctl-etcd-cacert={certs['ca.pem']}",
        )  # fmt: skip
        no_cert.assert_outcomes(passed=1)
        no_cert.stdout.fnmatch_lines(["taskctl: warning: etcd unreachable (*TLS error*"])
    finally:
        server.stop()
