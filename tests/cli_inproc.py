"""Run ``cas`` inside the test process with click's ``CliRunner``.

Only for cases that check what a command prints (and that it succeeded): a real
process costs the interpreter's start-up and casstore's imports on every call.
Exit codes a user sees, signals, mounts, servers and anything run as another uid
stay real processes (:func:`helpers.cas`).

A command run in-process shares this process's state, so :func:`cas_in_process`
puts back whatever a command might change (the environment, the working folder,
the umask, logging handlers and levels, signal handlers) and collects the
garbage, which closes the LMDB environment a command left open: LMDB must never
have one file open twice in a process.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from click.testing import CliRunner

from casstore.cli.main import cli

from helpers import WRITERS, Result

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
           signal.SIGPIPE, signal.SIGCHLD)


def _loggers() -> list[logging.Logger]:
    known = logging.Logger.manager.loggerDict.values()
    return [logging.getLogger(), *(lg for lg in known if isinstance(lg, logging.Logger))]


@contextmanager
def preserved_process_state() -> Iterator[None]:
    """Put back the process-wide state a CLI command may change, however it ends."""
    env = dict(os.environ)
    cwd = os.getcwd()
    mask = os.umask(0o022)
    os.umask(mask)
    logs = {lg: (list(lg.handlers), lg.level, lg.propagate, lg.disabled) for lg in _loggers()}
    handlers = {s: signal.getsignal(s) for s in SIGNALS}
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        os.umask(mask)
        for lg in _loggers():
            hs, level, propagate, disabled = logs.get(lg, ([], logging.NOTSET, True, False))
            for h in lg.handlers:
                if h not in hs:
                    h.close()
            lg.handlers[:] = hs
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled
        for s, h in handlers.items():
            if h is not None:
                signal.signal(s, h)


def cas_in_process(store: Path | None, *args: str, check: bool = False,
                   env: dict[str, str] | None = None, input: bytes | str | None = None,
                   init: bool = True) -> Result:
    """``cas [--store STORE] ARGS`` through click's test runner, as :func:`helpers.cas`
    runs it in a process: the same :class:`Result`, ``CAS_DEBUG`` unset, and an
    exception that escaped the CLI's error boundary shown as a traceback on stderr.
    Like :func:`helpers.cas`, a writer aimed at a missing ``store`` runs ``cas init``
    first unless ``init`` is False."""
    command = next((a for a in args if not a.startswith("-")), None)
    if init and store is not None and command in WRITERS and not os.path.lexists(store):
        cas_in_process(store, "init", env=env, init=False)
    argv = (["--store", str(store)] if store is not None else []) + list(args)
    overrides: dict[str, str | None] = {"CAS_DEBUG": None, **(env or {})}
    with preserved_process_state():
        got = CliRunner().invoke(cli, argv, env=overrides, input=input, prog_name="cas")
        err = got.stderr
        if got.exception is not None and not isinstance(got.exception, SystemExit):
            err += "".join(traceback.format_exception(got.exception))
        res = Result(got.exit_code, got.stdout, err)
        del got
    gc.collect()
    if check and res.code != 0:
        raise AssertionError(f"cas {' '.join(args)} failed ({res.code}): {res.err}")
    return res
