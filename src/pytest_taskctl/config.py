"""The run's settings from options, ini and environment, validated once.

Any bad value is a :class:`pytest.UsageError` (exit 4) raised before
anything is written, naming the value, where it came from and what is allowed.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import secrets
import socket
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from .etcd.settings import ETCD_OPTIONS, EtcdSettings, SettingError, resolve_prefix
from .keys import InvalidRunId, RunKeys, validate_run_id
from .options import SPAN_DETAILS
from .telemetry.export import TRUE_WORDS, ExportConfig, InvalidExportConfig
from .telemetry.logs import parse_level

RUN_ID_ENV = "PYTEST_RUN_ID"
#: Key of ``workerinput`` through which pytest-xdist workers get the controller's run id.
WORKER_RUN_ID = "taskctl_run_id"
#: Key of ``workerinput`` with the controller's session span (a W3C traceparent).
WORKER_SESSION = "taskctl_session_traceparent"
TRACE_URL_ENV = "PYTEST_TASKCTL_TRACE_URL"
TRACE_MODES = ("test", "session")
HTTP_ENV = "PYTEST_TASKCTL_HTTP"
FALSE_WORDS = ("0", "false", "no", "off")

#: Options whose value is a secret, whatever program they belong to.
SECRET_OPTION = re.compile(r"^--?[\w-]*(password|passwd|secret|token|api[-_]?key)[\w-]*$", re.I)
#: Options whose value is ``user:password`` (ours and taskctl's): the user stays readable.
USER_OPTIONS = frozenset(
    flag
    for option in ETCD_OPTIONS
    if option.setting == "user"
    for flag in (option.pytest_flag, *option.cli_flags)
)
URL_CREDENTIALS = re.compile(r"(://[^/:@\s]+):[^@/\s]+@")


def generate_run_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def trace_url_template(template: str, source: str) -> str:
    """Check a trace link template: ``{trace_id}`` and no other placeholder.

    Checked while parsing options, so a typo (``{traceid}``) is a usage error
    before the run starts, not a KeyError in the terminal summary at its end.
    """
    try:
        fields = [
            field for _, field, _, _ in string.Formatter().parse(template) if field is not None
        ]
    except ValueError as exc:
        raise pytest.UsageError(
            f"invalid trace URL template {template!r} ({source}): {exc}"
        ) from None
    others = sorted({field for field in fields if field != "trace_id"})
    if others or not fields:
        problem = f"unknown placeholder {{{others[0]}}}" if others else "no {trace_id} placeholder"
        raise pytest.UsageError(
            f"invalid trace URL template {template!r} ({source}): {problem}; "
            "use e.g. http://localhost:16686/trace/{trace_id}"
        )
    return template


def _trace_url(config: pytest.Config) -> str | None:
    """``--taskctl-trace-url``, else the ini key, else the environment (the project's order)."""
    if config.option.taskctl_trace_url:
        return trace_url_template(config.option.taskctl_trace_url, "--taskctl-trace-url")
    ini = config.getini("taskctl_trace_url")
    if ini:
        return trace_url_template(ini, "ini taskctl_trace_url")
    if os.environ.get(TRACE_URL_ENV):
        return trace_url_template(
            os.environ[TRACE_URL_ENV], f"{TRACE_URL_ENV} environment variable"
        )
    return None


def _masked(value: str, user_option: bool) -> str:
    if user_option:
        user, colon, _ = value.partition(":")
        return f"{user}:***" if colon else "***"
    return "***"


def redact_argv(argv: list[str]) -> list[str]:
    """argv for the meta record, with the values of secret-bearing options masked.

    Only words that are options (``-x``/``--name``) are judged by their name,
    in both spellings (``--opt value`` and ``--opt=value``); a test path that
    happens to contain "token" is left alone. Credentials in URLs are masked too.
    """
    redacted: list[str] = []
    pending: bool | None = None  # the previous word was a secret option: mask this one
    for arg in argv:
        if pending is not None:
            redacted.append(_masked(arg, pending))
            pending = None
            continue
        if arg.startswith("-"):
            name, eq, value = arg.partition("=")
            user_option = name in USER_OPTIONS
            if user_option or SECRET_OPTION.match(name):
                if eq:
                    redacted.append(f"{name}={_masked(value, user_option)}")
                else:
                    redacted.append(arg)
                    pending = user_option
                continue
        redacted.append(URL_CREDENTIALS.sub(r"\1:***@", arg))
    return redacted


@dataclass(frozen=True)
class RunSettings:
    """Everything the run needs from options, ini and environment."""

    run_id: str
    run_id_generated: bool
    etcd: EtcdSettings
    prefix: str
    log_dir: Path
    #: ``--taskctl-log-level``: lower the root logger to this for the session (None: leave it).
    log_level: int | None
    trace_mode: str
    export: ExportConfig
    #: ``--taskctl-trace-url``: a viewer's URL with ``{trace_id}`` (None: show trace ids).
    trace_url: str | None = None
    #: pytest-xdist worker: the controller's session span as a traceparent (tests link to it).
    xdist_session: str | None = None
    #: ``--taskctl-span-detail``: ``test``, ``phases`` or ``fixtures`` (the default).
    span_detail: str = "fixtures"
    #: ``--taskctl-http``: instrument requests, httpx and urllib3 for the session.
    http: bool = False
    #: ``--join``: one of many processes of the run; its files go to a directory of its own.
    join: bool = False

    @property
    def keys(self) -> RunKeys:
        return RunKeys(self.prefix, self.run_id)

    @property
    def run_dir(self) -> Path:
        if self.join:  # processes of one run on one machine must not share files
            return self.log_dir / self.run_id / "workers" / f"{socket.gethostname()}-{os.getpid()}"
        return self.log_dir / self.run_id

    @classmethod
    def from_config(cls, config: pytest.Config) -> RunSettings:
        option = config.option
        environ = os.environ
        raw_id = option.taskctl_run_id
        source = "--run-id"
        workerinput = getattr(config, "workerinput", {})
        if WORKER_RUN_ID in workerinput:  # an xdist worker: the controller's (maybe generated) id
            raw_id, source = workerinput[WORKER_RUN_ID], "the xdist controller"
        if raw_id is None and RUN_ID_ENV in environ:
            raw_id, source = environ[RUN_ID_ENV], f"{RUN_ID_ENV} environment variable"
        generated = raw_id is None and not workerinput
        try:
            run_id = generate_run_id() if raw_id is None else validate_run_id(raw_id)
            etcd = EtcdSettings.resolve(
                endpoints=option.taskctl_etcd,
                cacert=option.taskctl_etcd_cacert,
                cert=option.taskctl_etcd_cert,
                key=option.taskctl_etcd_key,
                user=option.taskctl_etcd_user,
            )
            level_text = option.taskctl_log_level or config.getini("taskctl_log_level")
            level = (
                parse_level(level_text, "--taskctl-log-level / taskctl_log_level")
                if level_text
                else None
            )
            export = ExportConfig.from_environ(environ)
        except InvalidRunId as exc:
            raise pytest.UsageError(f"{exc} (from {source})") from None
        except (SettingError, ValueError, InvalidExportConfig) as exc:
            raise pytest.UsageError(str(exc)) from None
        trace_mode = option.taskctl_trace_mode or config.getini("taskctl_trace_mode") or "test"
        if trace_mode not in TRACE_MODES:
            raise pytest.UsageError(
                f"invalid taskctl_trace_mode {trace_mode!r}: use 'test' or 'session'"
            )
        span_detail = (
            option.taskctl_span_detail or config.getini("taskctl_span_detail") or "fixtures"
        )
        if span_detail not in SPAN_DETAILS:
            raise pytest.UsageError(
                f"invalid --taskctl-span-detail / taskctl_span_detail {span_detail!r}: "
                "use 'test', 'phases' or 'fixtures'"
            )
        log_dir = Path(option.taskctl_log_dir or config.getini("taskctl_log_dir") or "logs")
        if not log_dir.is_absolute():
            log_dir = config.invocation_params.dir / log_dir
        return cls(
            run_id=run_id,
            run_id_generated=generated,
            etcd=etcd,
            prefix=resolve_prefix(option.taskctl_prefix),
            log_dir=log_dir,
            log_level=level,
            trace_mode=trace_mode,
            export=export,
            trace_url=_trace_url(config),
            xdist_session=workerinput.get(WORKER_SESSION),
            span_detail=span_detail,
            http=_http_wanted(option.taskctl_http, config.getini("taskctl_http"), environ),
            join=bool(getattr(option, "taskctl_join", False)),
        )


def _http_wanted(flag: bool | None, ini: bool, environ: Mapping[str, str]) -> bool:
    """``--taskctl-http``, else ``PYTEST_TASKCTL_HTTP``, else ini ``taskctl_http``."""
    if flag:
        return True
    value = environ.get(HTTP_ENV, "").strip().lower()
    if value:
        if value in TRUE_WORDS:
            return True
        if value in FALSE_WORDS:
            return False
        raise pytest.UsageError(
            f"invalid {HTTP_ENV}={value!r}: use 1/true/yes/on or 0/false/no/off"
        )
    return bool(ini)
