"""Entry point of ``cas``: the group, global options, and subcommand registration."""

from __future__ import annotations

import importlib

import click

from casstore.cli.common import Ctx

SUBCOMMANDS = ["init_cmd", "put_cmd", "get_cmd", "browse_cmd", "release_cmd", "keygen_cmd",
               "fsck_cmd", "gc_cmd", "stat_cmd", "mount_cmd", "exec_cmd", "depot_cmd",
               "registry_cmd", "serve_cmd", "mirror_cmd", "push_cmd", "doctor_cmd",
               "env_cmd"]
# Commands defined in a module not named after them.
MODULE_OF = {"cat": "browse_cmd", "ls": "browse_cmd", "diff": "browse_cmd",
             "umount": "mount_cmd", "status": "mount_cmd", "reload": "mount_cmd",
             "pull": "push_cmd"}


class _LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand runs.

    ``cas put`` then does not pay for importing every other command (releases,
    signing, FUSE, Julia helpers): start-up is part of every short command's time.
    """

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands:
            _load(name)
        return super().get_command(ctx, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        _register()
        return super().list_commands(ctx)


@click.group(cls=_LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--store", type=click.Path(), default=None,  # a str: URLs must stay intact
              help="Store directory or http(s):// URL for reading (default: $CAS_STORE, else "
                   "~/.local/share/casstore/store).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or chatter.")
@click.version_option(package_name="casstore")
@click.pass_context
def cli(ctx: click.Context, store: str | None, as_json: bool, quiet: bool) -> None:
    """casstore: a content-addressed artifact store for read-only Julia depots.

    Create a store (`cas init`), put files in (`cas put`), sign a release of a tree
    (`cas release create`), and mount it read-only on nodes (`cas mount`).  See
    README.md and docs/FORMAT.md.
    """
    ctx.obj = Ctx(store, as_json, quiet)


def _register() -> None:
    for mod in SUBCOMMANDS:
        try:
            importlib.import_module(f"casstore.cli.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"casstore.cli.{mod}":
                raise


def _load(name: str) -> None:
    """Import the module that defines the command if it is known, else all of them."""
    mod = MODULE_OF.get(name, f"{name}_cmd")
    if mod in SUBCOMMANDS:
        importlib.import_module(f"casstore.cli.{mod}")
        if name in cli.commands:
            return
    _register()


def main() -> None:
    cli(prog_name="cas")
