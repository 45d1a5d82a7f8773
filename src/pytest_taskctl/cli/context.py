"""What every subcommand shares: its :class:`Context`, exit codes, and argument helpers.

Handlers raise :class:`CommandFailed` for an action that could not be done;
:func:`~pytest_taskctl.cli.app.main` turns it, and etcd and setting errors,
into the exit codes below. The argument helpers make a bad value a usage
error (exit 2) while parsing, not a traceback in a handler.
"""

from __future__ import annotations

import argparse
import json
from functools import cached_property
from typing import Any, TextIO

from ..etcd.settings import ETCD_OPTIONS, EtcdSettings, resolve_prefix
from ..etcd.store import StateStore
from ..keys import RunKeys, validate_run_id

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CommandFailed(Exception):
    """An action that could not be done (unknown run, ended run, ...): exit 1."""


class Context:
    """What a handler needs: its arguments, the output streams, and etcd on first use."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self._store: StateStore | None = None

    @cached_property
    def settings(self) -> EtcdSettings:
        """Resolved on first use, so ``taskctl server`` never trips over etcd settings."""
        args = self.args
        return EtcdSettings.resolve(
            endpoints=getattr(args, "endpoints", None),
            cacert=getattr(args, "cacert", None),
            cert=getattr(args, "cert", None),
            key=getattr(args, "key", None),
            user=getattr(args, "user", None),
            option_prefix="--etcd",
        )

    @cached_property
    def prefix(self) -> str:
        return resolve_prefix(getattr(self.args, "prefix", None))

    @property
    def store(self) -> StateStore:
        if self._store is None:
            self._store = StateStore(self.settings, self.prefix)
        return self._store

    def keys(self, run_id: str) -> RunKeys:
        return RunKeys(self.prefix, run_id)

    def redact(self, text: str) -> str:
        """Belt and braces: a password must never reach the terminal."""
        if "settings" in self.__dict__ and self.settings.password:
            text = text.replace(self.settings.password, "***")
        return text

    def say(self, text: str) -> None:
        """A message for the person at the terminal (stderr)."""
        print(self.redact(text), file=self.err, flush=True)

    def emit(self, text: str) -> None:
        """Data (stdout)."""
        print(text, file=self.out, flush=True)

    def emit_json(self, data: Any) -> None:
        self.emit(json.dumps(data, indent=2))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


# -- arguments --------------------------------------------------------------------


def add_etcd_options(parser: argparse.ArgumentParser) -> None:
    """The etcdctl-style connection options every etcd subcommand shares.

    Each lands in ``args.<setting>``, the name :attr:`Context.settings` reads.
    """
    group = parser.add_argument_group("etcd connection (like etcdctl)")
    for option in ETCD_OPTIONS:
        group.add_argument(
            *option.cli_flags, dest=option.setting, metavar=option.metavar, help=option.help
        )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print JSON (shapes in docs/cli.md) instead of text"
    )


def run_id_argument(text: str) -> str:
    """argparse type for run ids: a bad one is a usage error naming the allowed pattern."""
    try:
        return validate_run_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_run_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", type=run_id_argument, help="the run's id")


def non_negative_float(text: str) -> float:
    """argparse type for durations in seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def port_number(text: str) -> int:
    """argparse type for TCP ports."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port out of range 1-65535: {text}")
    return value
