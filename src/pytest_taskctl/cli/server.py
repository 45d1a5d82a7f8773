"""``taskctl server``: an embedded etcd in the foreground, for one machine without Docker."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from .context import EXIT_OK, CommandFailed, Context, port_number


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM stop the foreground server alike.

    SIGINT is set explicitly: a shell starts background jobs with it ignored,
    and ``kill -INT`` should still stop the server cleanly.
    """
    if not threading_is_main():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    saved = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def threading_is_main() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """While etcd shuts down, a second Ctrl-C must not leave it running."""
    if not threading_is_main():
        yield
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def cmd_server(ctx: Context) -> int:
    from ..etcd.server import EmbeddedEtcd, EtcdNotInstalled, port_in_use

    args = ctx.args
    data_dir = Path(args.data_dir).expanduser().absolute()
    if port_in_use(args.port, args.host):
        raise CommandFailed(
            f"port {args.port} on {args.host} is already in use (another etcd or taskctl "
            "server?); stop it or choose another with --port"
        )
    server = EmbeddedEtcd(data_dir, port=args.port, host=args.host)
    with stop_signals_interrupt():
        try:
            server.start()
            if not args.host.startswith("127.") and args.host != "localhost":
                ctx.say(
                    f"taskctl: warning: etcd listens on {args.host} without TLS or auth; "
                    "anyone who reaches it can pause and cancel runs"
                )
            ctx.say(f"etcd ready at {server.endpoint} (data {data_dir}); Ctrl-C to stop")
            assert server.process is not None
            code = server.process.wait()
            raise CommandFailed(f"etcd exited unexpectedly (code {code}); see {server.log_path}")
        except KeyboardInterrupt:
            ctx.say("stopping etcd")
            return EXIT_OK
        except EtcdNotInstalled as exc:
            raise CommandFailed(str(exc)) from None
        except (RuntimeError, OSError) as exc:  # etcd exited, never became healthy, no data dir
            raise CommandFailed(f"cannot start etcd: {exc}") from None
        finally:
            with signals_ignored():
                server.stop()


def server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=os.path.join(".taskctl", "etcd"),
        metavar="DIR",
        help="etcd data directory, kept between starts (default .taskctl/etcd); "
        "etcd's log goes next to it (DIR.log)",
    )
    parser.add_argument("--port", type=port_number, default=2379, help="client port (default 2379)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; etcd runs without TLS or auth)",
    )
