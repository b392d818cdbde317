"""``cas exec``: run one command with a release mounted, in a private mount namespace.

This is how a batch job (or a test, or the benchmark) uses a release without
touching the node's mount table: the mount exists only for the command's process
tree and is unmounted when it ends, whatever its exit status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import click

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.errors import MountError

_INSIDE = "CAS_EXEC_IN_NAMESPACE"


def _cas(*args: str) -> list[str]:
    return [sys.executable, "-m", "casstore", *args]


def _global_args(ctx: Ctx) -> list[str]:
    """--store goes on to the inner `cas mount`; $CAS_STORE reaches it through the
    environment, where the config's 'source' wins over it (mount_cmd._explicit_store)."""
    given = click.get_current_context().find_root().params.get("store")
    return ["--store", str(ctx.store_spec)] if given else []


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
    Needs root (a private mount namespace via unshare(1)).  The mount point is
    created if missing; nothing else on the host changes.
    """
    if os.environ.get(_INSIDE) != str(os.getpid()):
        sys.exit(_reexec())
    from casstore.client.mounttable import is_mounted

    signals = _Signals()  # from here on, a SIGTERM/SIGHUP never skips the unmount
    opts = [*(["--config", str(config_path)] if config_path else []),
            *(["--arch", arch] if arch else []),
            *(["--no-prefetch"] if no_prefetch else []),
            *(["--record-access", str(record_access.resolve())] if record_access else [])]
    mountpoint.mkdir(parents=True, exist_ok=True)
    os.environ.pop(_INSIDE, None)
    umount = _cas("-q", "umount", str(mountpoint),
                  *(["--config", str(config_path)] if config_path else []))
    before = is_mounted(mountpoint)  # then `cas mount` refuses: leave it alone
    try:
        from casstore.client.watchdog import OWNER_ENV

        mounted = subprocess.run(_cas(*_global_args(ctx), "-q", "mount", release,
                                      str(mountpoint), *opts), stdout=sys.stderr,
                                 env=dict(os.environ, **{OWNER_ENV: str(os.getpid())}))
        if mounted.returncode != 0:
            code = _status(mounted.returncode)
        elif signals.pending:  # signalled while mounting: run nothing
            code = 128 + signals.pending[0]
        else:
            code = signals.run(list(cmd))
    finally:
        # Also when the mount was signalled half-way.  A command that leaves a
        # process behind in the mount makes it busy: detach lazily then, or the
        # daemon would live on in this namespace for ever.
        if not before and is_mounted(mountpoint) and subprocess.run(
                umount, stdout=subprocess.DEVNULL).returncode != 0:
            subprocess.run([*umount, "--lazy"], stdout=subprocess.DEVNULL)
    sys.exit(code)


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


def _reexec() -> int:
    """Run this same command again inside a new private mount namespace."""
    import shutil

    if os.geteuid() != 0 or not shutil.which("unshare"):
        raise MountError("cas exec needs root and unshare(1) for a private mount namespace")
    # unshare execs python directly, so the child's pid is known only inside; the
    # marker is set by a tiny shell that exports its own pid before exec.
    script = f'export {_INSIDE}=$$; exec "$@"'
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
            sys.executable, "-m", "casstore", *sys.argv[1:]]
    return _Signals().run(argv)
