"""Shared CLI plumbing: store selection, output modes, progress, and the error boundary.

Every user error becomes one line on stderr and the error class's exit code; no
traceback reaches a user unless ``CAS_DEBUG=1`` asks for one.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from casstore.errors import CasError, StoreError
from casstore.store.progress import Progress, no_progress

F = TypeVar("F", bound=Callable[..., Any])
INTERNAL_EXIT = 70  # EX_SOFTWARE: not a CasError, so not a user mistake


def default_store() -> Path:
    """``--store``, then ``$CAS_STORE``, then the user's data folder (XDG)."""
    env = os.environ.get("CAS_STORE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "casstore" / "store"


class Ctx:
    """What every subcommand needs: where the store is and how to talk."""

    def __init__(self, store: str | Path | None, as_json: bool, quiet: bool) -> None:
        # The source as given (a URL must not pass through Path, which eats "//").
        self.store_spec = str(store) if store else os.environ.get("CAS_STORE") or None
        self.store_path = Path(store) if store else default_store()
        self.as_json = as_json
        self.quiet = quiet

    def open_store(self, create: bool = False):
        from casstore.store.writable import Store

        return Store.open(self.store_path, create=create)

    def source(self):
        """The store for reading only (works on a read-only mirror): an ObjectSource
        from the one factory, :func:`casstore.sources.open_source`; an HTTP remote
        with the client config's proxies and timeouts (:func:`remote`)."""
        from casstore.sources import open_source

        if self.store_spec and "://" in self.store_spec:  # an HTTP remote (read-only)
            return remote(self.store_spec)
        if not self.store_path.exists():
            raise StoreError(f"no store at {self.store_path}")
        return open_source(self.store_path)

    def emit(self, data: Any, text: str | None = None) -> None:
        """Print ``data`` as JSON with --json, else ``text`` (or str(data))."""
        if self.as_json:
            click.echo(json.dumps(data, indent=1, sort_keys=True, default=str))
        else:
            click.echo(text if text is not None else str(data))

    @contextmanager
    def progress(self, total: int, desc: str) -> Iterator[Progress]:
        """A tqdm bar on a terminal; silent when piped, quiet or in --json mode."""
        if self.quiet or self.as_json or not sys.stderr.isatty():
            yield no_progress
            return
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                  leave=False, file=sys.stderr) as bar:
            yield bar.update


pass_ctx = click.make_pass_decorator(Ctx)


def remote(spec: str | Path):
    """A source named on the command line: a URL with the client config's proxies and
    timeouts (``$CAS_CONFIG`` or the default file), else a store folder (the config
    is not read: a local command does not depend on it)."""
    from casstore.sources import open_source

    if "://" not in str(spec):
        return open_source(spec)
    from casstore.client.config import load
    from casstore.client.connect import open_remote

    return open_remote(load(None), str(spec))


def handle_errors(fn: F) -> F:
    """The one error boundary: CasError -> one line + its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CasError as exc:
            if os.environ.get("CAS_DEBUG"):
                raise
            click.echo(f"cas: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("cas: interrupted", err=True)
            sys.exit(130)
        except OSError as exc:
            if os.environ.get("CAS_DEBUG"):
                raise
            where = f" {exc.filename}" if exc.filename else ""
            click.echo(f"cas: error:{where} {exc.strerror or exc}", err=True)
            sys.exit(StoreError.exit_code)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # a bug or an unmapped library error: still one line
            if os.environ.get("CAS_DEBUG"):
                raise
            click.echo(f"cas: internal error: {type(exc).__name__}: {exc} "
                       "(set CAS_DEBUG=1 for a traceback)", err=True)
            sys.exit(INTERNAL_EXIT)

    return wrapper  # type: ignore[return-value]


def command(group: click.Group, name: str, json_option: bool = True,
            **kw: Any) -> Callable[[F], F]:
    """Register a subcommand on ``group`` with the error boundary applied.

    Each subcommand also takes ``--json`` itself (``cas status X --json`` is
    ``cas --json status X``), unless ``json_option`` is False: ``cas exec`` passes
    everything after RELEASE to the command it runs."""

    def deco(fn: F) -> F:
        target = handle_errors(fn)
        if json_option:
            target = _json_after(target)
        return group.command(name, **kw)(target)  # type: ignore[return-value]

    return deco


def _json_after(fn: F) -> F:
    @click.option("--json", "json_after", is_flag=True,
                  help="Machine-readable JSON output (same as cas --json).")
    @functools.wraps(fn)
    def wrapper(*args: Any, json_after: bool = False, **kwargs: Any) -> Any:
        if json_after:
            click.get_current_context().find_object(Ctx).as_json = True
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
