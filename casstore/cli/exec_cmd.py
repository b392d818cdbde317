"""``cas exec``: run one command with a release mounted, in a private mount namespace.

This is how a batch job (or a test, or the benchmark) uses a release without
touching the node's mount table: the mount exists only for the command's process
tree and is unmounted when it ends, whatever its exit status.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from casstore.cli.common import Ctx, command, handle_errors, pass_ctx
from casstore.cli.main import cli
from casstore.client.watchdog import OWNER_ENV
from casstore.errors import CasError, MountError

if TYPE_CHECKING:
    from casstore.client.config import ClientConfig

CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18


@command(cli, "exec", json_option=False, context_settings={"ignore_unknown_options": True})
@click.argument("release")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--mountpoint", type=click.Path(path_type=Path), default=Path("/depot"),
              show_default=True)
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="Client config TOML (as for cas mount).")
@click.option("--arch", metavar="LEVEL", default=None, help="Force a CPU level.")
@click.option("--no-prefetch", is_flag=True,
              help="Do not replay the release's prefetch list on mount.")
@click.option("--record-access", type=click.Path(path_type=Path), hidden=True,
              help="Record the paths served to FILE (cas depot build).")
@pass_ctx
def exec_(ctx: Ctx, release: str, cmd: tuple[str, ...], mountpoint: Path,
          config_path: Path | None, arch: str | None, no_prefetch: bool,
          record_access: Path | None) -> None:
    """Mount RELEASE at --mountpoint privately, run CMD, unmount; exit with CMD's status.

    \b
    Example:
      cas exec depot -- /depot/julia/bin/julia -e 'using CasJets'
    Needs root (a private mount namespace).  The mount point is created if
    missing; nothing else on the host changes.
    """
    from casstore.client.config import load

    cfg = load(config_path)
    _private_namespace()
    # Imported before the fork, so the mounting child does not import them again.
    from casstore.client.fuse.mount import serve, unmount  # noqa: F401
    from casstore.client.mounttable import is_mounted
    from casstore.client.selection import select  # noqa: F401

    signals = _Signals()  # from here on, a SIGTERM/SIGHUP never skips the unmount
    mountpoint.mkdir(parents=True, exist_ok=True)
    before = is_mounted(mountpoint)  # then the mount refuses: leave it alone
    record = record_access.resolve() if record_access else None
    try:
        code = _mount(lambda: _serve(ctx, cfg, release, mountpoint, arch, not no_prefetch,
                                     record))
        if code == 0 and signals.pending:  # signalled while mounting: run nothing
            code = 128 + signals.pending[0]
        elif code == 0:
            code = signals.run(list(cmd))
    finally:
        # Also when the mount was signalled half-way.  A command that leaves a
        # process behind in the mount makes it busy: detach lazily then, or the
        # daemon would live on in this namespace for ever.
        if not before and is_mounted(mountpoint):
            _unmount(cfg, mountpoint)
    sys.exit(code)


def _private_namespace() -> None:
    """Move this process into a new mount namespace whose mounts propagate nowhere
    (what ``unshare -m --propagation private`` does), in this same interpreter."""
    import ctypes

    if os.geteuid() != 0:
        raise MountError("cas exec needs root for a private mount namespace")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise MountError(f"cas exec: cannot make a private mount namespace: "
                         f"{os.strerror(ctypes.get_errno())}")
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise MountError(f"cas exec: cannot make the mount namespace private: "
                         f"{os.strerror(ctypes.get_errno())}")


def _mount(serve: Callable[[], None]) -> int:
    """Mount in a forked child, as ``cas mount`` would: its exit status is 0 once the
    mount exists (libfuse then daemonises it), else the mount's error exit code.

    A fork, not a new interpreter: the modules the mount needs are already loaded."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)  # as the job's other processes
            os.environ[OWNER_ENV] = str(os.getppid())
            handle_errors(serve)()
            code = 0
        except SystemExit as exc:  # handle_errors: one line written, the exit code
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    while True:
        try:
            return _status(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        except InterruptedError:  # pragma: no cover - PEP 475 retries waitpid
            continue


def _serve(ctx: Ctx, cfg: ClientConfig, release: str, mountpoint: Path, arch: str | None,
           prefetch: bool, record: Path | None) -> None:
    """The mount (in the forked child): owned by cas exec, so never following."""
    from casstore.cli.mount_cmd import _explicit_store, mounting_text
    from casstore.client.follow import follow_policy
    from casstore.client.fuse.mount import serve
    from casstore.client.selection import select
    from casstore.releases.release import parse_spec

    policy = follow_policy(cfg, None, pinned=parse_spec(release)[1] is not None, owned=True,
                           recording=record is not None)
    p = select(release, cfg, _explicit_store(ctx, cfg), arch, None)
    click.echo(mounting_text(p, mountpoint, None), err=True)  # on stderr: stdout is CMD's
    serve(p, cfg, mountpoint, foreground=False, record_to=record, prefetch=prefetch,
          policy=policy, arch=arch)


def _unmount(cfg: ClientConfig, mountpoint: Path) -> None:
    """Unmount and wait for the daemon; lazily if the command left the mount busy."""
    from casstore.client.fuse.unmount import unmount
    from casstore.errors import MountBusy

    try:
        unmount(cfg, mountpoint)
    except MountBusy:
        try:
            unmount(cfg, mountpoint, lazy=True)
        except CasError as exc:
            click.echo(f"cas: error: {exc}", err=True)
    except CasError as exc:
        click.echo(f"cas: error: {exc}", err=True)


def _status(code: int) -> int:
    """The shell's convention: 128+N for a child that died of signal N."""
    return 128 - code if code < 0 else code


class _Signals:
    """SIGTERM/SIGHUP/SIGINT handling for both the outer and the inner process.

    Before the child runs, a signal is only recorded (``pending``) so that the
    process lives on to clean up; while it runs, SIGTERM and SIGHUP are passed on
    to it and SIGINT is left to it (from a terminal it gets SIGINT itself).
    """

    def __init__(self) -> None:
        self.pending: list[int] = []
        self.proc: subprocess.Popen | None = None
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, sig: int, _frame: object) -> None:
        if self.proc is None:
            self.pending.append(sig)
        elif sig != signal.SIGINT and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def run(self, argv: list[str]) -> int:
        """Run ``argv`` to its end; 127 if it does not exist, 126 if not executable."""
        try:
            self.proc = subprocess.Popen(argv, restore_signals=True)
        except FileNotFoundError:
            click.echo(f"cas: error: {argv[0]}: command not found", err=True)
            return 127
        except PermissionError as exc:
            click.echo(f"cas: error: {argv[0]}: {exc.strerror}", err=True)
            return 126
        if self.pending and self.pending[0] != signal.SIGINT:
            self.proc.send_signal(self.pending[0])
        return _status(self.proc.wait())
