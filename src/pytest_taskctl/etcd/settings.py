"""Where each setting comes from: option, then environment, then default.

The precedence is data (``*_SOURCES`` tuples), shared by the pytest plugin and
the ``taskctl`` CLI, and every error names the source of the bad value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..keys import DEFAULT_PREFIX, normalize_prefix

DEFAULT_ENDPOINT = "127.0.0.1:2379"

#: (environment variable, ...) consulted after the command-line option, in order.
ENDPOINT_ENV = ("PYTEST_TASKCTL_ETCD", "ETCDCTL_ENDPOINTS")
PREFIX_ENV = ("PYTEST_TASKCTL_PREFIX",)
CACERT_ENV = ("PYTEST_TASKCTL_ETCD_CACERT", "ETCDCTL_CACERT")
CERT_ENV = ("PYTEST_TASKCTL_ETCD_CERT", "ETCDCTL_CERT")
KEY_ENV = ("PYTEST_TASKCTL_ETCD_KEY", "ETCDCTL_KEY")
USER_ENV = ("PYTEST_TASKCTL_ETCD_USER", "ETCDCTL_USER")
PASSWORD_ENV = ("PYTEST_TASKCTL_ETCD_PASSWORD", "ETCDCTL_PASSWORD")


class SettingError(ValueError):
    """A bad setting; the message names its source and how to fix it."""


def pick(
    option: str | None, option_name: str, env_names: tuple[str, ...], environ: Mapping[str, str]
) -> tuple[str | None, str]:
    """Return ``(value, source)`` by the precedence option > env vars in order."""
    if option is not None:
        return option, option_name
    for name in env_names:
        value = environ.get(name)
        if value:
            return value, f"{name} environment variable"
    return None, "default"


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_endpoints(text: str, source: str, tls: bool = False) -> tuple[Endpoint, ...]:
    """Parse ``HOST:PORT[,HOST:PORT...]`` or ``http(s)://`` URLs, like etcdctl."""
    endpoints = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        has_scheme = "://" in item
        parts = urlsplit(item if has_scheme else f"//{item}")
        scheme = parts.scheme or ("https" if tls else "http")
        try:
            port = parts.port or 2379
        except ValueError:
            port = -1
        if scheme not in ("http", "https") or not parts.hostname or port <= 0:
            raise SettingError(
                f"invalid etcd endpoint {item!r} from {source}: "
                "expected HOST:PORT or http(s)://HOST:PORT, comma-separated"
            )
        endpoints.append(Endpoint(scheme, parts.hostname, port))
    if not endpoints:
        raise SettingError(f"no etcd endpoint in {text!r} from {source}")
    return tuple(endpoints)


@dataclass(frozen=True)
class EtcdSettings:
    """How to reach etcd: endpoints, TLS files, and credentials."""

    endpoints: tuple[Endpoint, ...] = (Endpoint("http", "127.0.0.1", 2379),)
    source: str = "default"
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    #: Seconds to wait for an answer: room for a 1 s round trip on a loaded machine.
    timeout: float = 3.0
    #: Seconds to wait for a TCP (and TLS) connection; a dead member is left quickly.
    connect_timeout: float = 2.0
    #: A watched view checks every this many seconds that its watch still delivers.
    liveness_interval: float = 1.0
    #: ...and gives that check this long to answer before the path counts as silent.
    liveness_timeout: float = 2.0

    def describe(self) -> str:
        """Endpoint list for headers and messages; never shows the password."""
        text = ",".join(
            f"{e.host}:{e.port}" if e.scheme == "http" else str(e) for e in self.endpoints
        )
        if self.user:
            text += f" (user {self.user})"
        return text

    @classmethod
    def resolve(
        cls,
        *,
        endpoints: str | None = None,
        cacert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        user: str | None = None,
        environ: Mapping[str, str] | None = None,
        option_prefix: str = "--taskctl-etcd",
    ) -> EtcdSettings:
        env = os.environ if environ is None else environ
        cacert, _ = pick(cacert, f"{option_prefix}-cacert", CACERT_ENV, env)
        cert, _ = pick(cert, f"{option_prefix}-cert", CERT_ENV, env)
        key, _ = pick(key, f"{option_prefix}-key", KEY_ENV, env)
        if bool(cert) != bool(key):
            raise SettingError(
                f"etcd client TLS needs both {option_prefix}-cert and {option_prefix}-key"
            )
        for path, what in ((cacert, "cacert"), (cert, "cert"), (key, "key")):
            if path and not os.path.isfile(path):
                raise SettingError(f"etcd {what} file not found: {path!r}")
        text, source = pick(endpoints, option_prefix, ENDPOINT_ENV, env)
        tls = bool(cacert or cert)
        parsed = parse_endpoints(text or DEFAULT_ENDPOINT, source, tls=tls)
        raw_user, user_source = pick(user, f"{option_prefix}-user", USER_ENV, env)
        name: str | None = None
        password: str | None = None
        if raw_user:
            name, sep, password_part = raw_user.partition(":")
            password = password_part if sep else pick(None, "", PASSWORD_ENV, env)[0]
            if not name or password is None:
                raise SettingError(
                    f"etcd user from {user_source} must be 'user:password' "
                    f"(or set {PASSWORD_ENV[0]})"
                )
        return cls(parsed, source, cacert, cert, key, name, password)


def resolve_prefix(option: str | None, environ: Mapping[str, str] | None = None) -> str:
    value, _ = pick(
        option, "--taskctl-prefix", PREFIX_ENV, os.environ if environ is None else environ
    )
    return normalize_prefix(value or DEFAULT_PREFIX)


@dataclass(frozen=True)
class EtcdOption:
    """One etcd connection option, as both front ends offer it.

    The pytest plugin adds :attr:`pytest_flag` (its dest follows from the
    flag: ``--taskctl-etcd-cacert`` -> ``taskctl_etcd_cacert``); ``taskctl``
    adds :attr:`cli_flags` with ``dest=`` :attr:`setting`, the keyword of
    :meth:`EtcdSettings.resolve` (or ``prefix`` for :func:`resolve_prefix`).
    Help, metavar and environment variables are written only here, so the
    two front ends cannot drift apart.
    """

    setting: str
    pytest_flag: str
    #: taskctl's spellings: its own and etcdctl's, so etcdctl habits work.
    cli_flags: tuple[str, ...]
    metavar: str
    what: str
    env: tuple[str, ...]
    #: After the environment variables in the help: the default, or more sources.
    note: str | None = None

    @property
    def help(self) -> str:
        """``what (env A, B; note)``: where a value comes from when the option is not given."""
        sources = "env " + ", ".join(self.env)
        if self.note:
            sources += f"; {self.note}"
        return f"{self.what} ({sources})"


def _tls_option(setting: str, what: str, env: tuple[str, ...]) -> EtcdOption:
    return EtcdOption(
        setting,
        f"--taskctl-etcd-{setting}",
        (f"--{setting}", f"--etcd-{setting}"),
        "FILE",
        f"TLS {what}",
        env,
    )


#: The etcd connection options, in the order help lists them.
ETCD_OPTIONS: tuple[EtcdOption, ...] = (
    EtcdOption(
        "endpoints",
        "--taskctl-etcd",
        ("--etcd", "--endpoints"),
        "HOST:PORT[,...]",
        "etcd endpoints, also http(s):// URLs",
        ENDPOINT_ENV,
        f"default {DEFAULT_ENDPOINT}",
    ),
    EtcdOption(
        "prefix",
        "--taskctl-prefix",
        ("--prefix",),
        "PREFIX",
        "key prefix of the runs",
        PREFIX_ENV,
        f"default {DEFAULT_PREFIX}",
    ),
    _tls_option("cacert", "CA file", CACERT_ENV),
    _tls_option("cert", "client certificate", CERT_ENV),
    _tls_option("key", "client key", KEY_ENV),
    EtcdOption(
        "user",
        "--taskctl-etcd-user",
        ("--user", "--etcd-user"),
        "USER[:PASSWORD]",
        "etcd credentials",
        USER_ENV,
        "a password given apart: " + ", ".join(PASSWORD_ENV),
    ),
)
