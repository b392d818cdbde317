"""``mount.fuse.cas``: the mount(8) helper, so fstab, systemd and autofs can mount releases.

``mount -t fuse.cas RELEASE /depot -o config=/etc/casstore/client.toml`` makes
mount(8) run ``/sbin/mount.fuse.cas RELEASE /depot [-sfnv] -o OPTS [-t fuse.cas]``;
systemd ``.mount`` units and autofs call mount(8) the same way.  This module turns
that into ``cas mount RELEASE /depot --config ...`` (in process: the daemon forks
once the mount exists, so the helper returns only when the mount is ready, with
``cas mount``'s exit status).

Options (comma-separated, as in fstab):

* ``config=FILE`` (default: ``$CAS_CONFIG``, else ``/etc/casstore/client.toml``),
  ``arch=LEVEL``, ``revision=N``, ``noprefetch``: passed to ``cas mount``;
* generic mount options that mean nothing to a read-only FUSE daemon, or that
  are meant for mount(8), systemd or autofs themselves, are dropped: ``ro``,
  ``rw`` (the mount is read-only whatever), ``defaults``, ``auto``, ``noauto``,
  ``user``, ``users``, ``nouser``, ``owner``, ``group``, ``_netdev``, ``nofail``,
  ``(no)suid``, ``(no)dev``, ``(no)exec``, ``(no)atime`` and the other atime
  flags, ``sync``/``async``, ``allow_other``, ``default_permissions``, and every
  ``x-*``/``X-*`` and ``comment=`` option;
* anything else is an error (one line, exit 2), unless mount(8) was given ``-s``
  (sloppy), in which case it is dropped with a warning.

SOURCE is ``NAME`` or ``NAME@N``; a leading ``:`` (autofs's "no host" form) or
``cas:`` (how ``/proc/mounts`` shows the mount) is removed.  ``-f`` (fake) checks
the arguments and mounts nothing, ``-v`` prints the "mounting ..." line, ``-n``
is accepted (there is no mtab to write).

The mount table shows SOURCE exactly as mount(8) gave it (``rel`` for an fstab line
``rel /depot fuse.cas ...``), so a second ``mount -a`` finds the line's mount
already there and skips it, as for any other filesystem.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from casstore.client.mounttable import CAS_FSTYPE
from casstore.errors import CasError, UsageError

PROG = "mount.fuse.cas"
_PASSED = {"config": "--config", "arch": "--arch", "revision": "--revision"}
_FLAGS = {"noprefetch": "--no-prefetch", "no_prefetch": "--no-prefetch"}
_DROPPED = {
    "ro", "rw", "defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group",
    "_netdev", "netdev", "nofail", "suid", "nosuid", "dev", "nodev", "exec", "noexec",
    "atime", "noatime", "relatime", "norelatime", "strictatime", "nostrictatime",
    "lazytime", "nolazytime", "diratime", "nodiratime", "sync", "async", "dirsync",
    "silent", "loud", "allow_other", "default_permissions", "nosymfollow",
}


@dataclass
class HelperArgs:
    """What mount(8) asked for, turned into ``cas mount`` arguments."""

    source: str
    mountpoint: str
    given: str  # SOURCE as mount(8) passed it: the mount table shows this
    cas_args: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fake: bool = False
    verbose: bool = False

    def argv(self) -> list[str]:
        """The ``cas`` command line (without the program name)."""
        return ["mount", self.source, self.mountpoint, "--fsname", self.given, *self.cas_args]


def _dropped(name: str) -> bool:
    return (name in _DROPPED or name.startswith(("x-", "X-"))
            or name == "comment")


def parse_options(text: str, sloppy: bool = False) -> tuple[list[str], list[str], list[str]]:
    """``-o`` text -> (cas mount arguments, dropped options, warnings).

    Raises UsageError for an unknown option (unless ``sloppy``), a repeated one,
    a flag given a value or a setting given none.
    """
    args: list[str] = []
    dropped: list[str] = []
    warnings: list[str] = []
    seen: set[str] = set()
    for opt in (o.strip() for o in text.split(",")):
        if not opt:
            continue
        name, eq, value = opt.partition("=")
        if _dropped(name):
            dropped.append(opt)
        elif name in _PASSED:
            if not eq or not value:
                raise UsageError(f"{PROG}: option {name}= needs a value")
            if name in seen:
                raise UsageError(f"{PROG}: option {name}= given twice")
            if name == "revision" and not (value.isascii() and value.isdigit()
                                           and int(value) >= 1):
                raise UsageError(f"{PROG}: revision={value!r} is not a revision number (>= 1)")
            seen.add(name)
            args += [_PASSED[name], value]
        elif name in _FLAGS:
            if eq:
                raise UsageError(f"{PROG}: option {name} takes no value")
            if _FLAGS[name] not in args:
                args.append(_FLAGS[name])
        elif sloppy:
            warnings.append(f"{PROG}: warning: ignoring unknown option {opt!r} (-s)")
            dropped.append(opt)
        else:
            raise UsageError(f"{PROG}: unknown option {opt!r} (known: config=FILE, "
                             "arch=LEVEL, revision=N, noprefetch; generic mount options "
                             "are ignored)")
    return args, dropped, warnings


def parse_argv(argv: list[str]) -> HelperArgs:
    """mount(8)'s helper command line: ``SOURCE MOUNTPOINT [-sfnv] [-o OPTS] [-t TYPE]``
    (options may come anywhere after the two positionals, flags may be bundled)."""
    positional: list[str] = []
    opts: list[str] = []
    flags = ""
    it = iter(argv)
    for arg in it:
        if arg in ("-o", "-t", "-N"):
            value = next(it, None)
            if value is None:
                raise UsageError(f"{PROG}: {arg} needs a value")
            if arg == "-o":
                opts.append(value)
            elif arg == "-t" and value not in (CAS_FSTYPE, "cas"):
                raise UsageError(f"{PROG}: wrong type {value!r} (this helper mounts "
                                 f"{CAS_FSTYPE})")
            elif arg == "-N":
                raise UsageError(f"{PROG}: -N (another mount namespace) is not supported; "
                                 "run mount inside that namespace")
        elif arg.startswith("-o") and len(arg) > 2:
            opts.append(arg[2:])
        elif arg.startswith("-") and len(arg) > 1 and arg != "--":
            bad = set(arg[1:]) - set("sfnvhi")
            if bad:
                raise UsageError(f"{PROG}: unknown flag -{''.join(sorted(bad))}")
            flags += arg[1:]
        elif arg != "--":
            positional.append(arg)
    if "h" in flags:
        raise UsageError(f"usage: {PROG} RELEASE MOUNTPOINT [-sfnv] [-o config=FILE,"
                         "arch=LEVEL,revision=N,noprefetch]")
    if len(positional) != 2:
        raise UsageError(f"{PROG}: need RELEASE and MOUNTPOINT (got {len(positional)} "
                         "arguments); usage: mount -t fuse.cas RELEASE MOUNTPOINT -o config=FILE")
    given, mountpoint = positional
    source = given
    for prefix in (":", "cas:"):
        source = source.removeprefix(prefix)
    if not source:
        raise UsageError(f"{PROG}: empty release name")
    cas_args, dropped, warnings = parse_options(",".join(opts), sloppy="s" in flags)
    return HelperArgs(source, mountpoint, given, cas_args, dropped, warnings, fake="f" in flags,
                      verbose="v" in flags)


def _quiet_stdout() -> None:
    """mount(8) helpers say nothing on success: send the 'mounting ...' line away."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``mount.fuse.cas``; exits with ``cas mount``'s status."""
    try:
        args = parse_argv(sys.argv[1:] if argv is None else argv)
    except CasError as exc:
        print(f"cas: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    for w in args.warnings:
        print(w, file=sys.stderr)
    if args.verbose:
        print(f"{PROG}: cas {' '.join(args.argv())}"
              + (f" (ignored: {','.join(args.dropped)})" if args.dropped else ""),
              file=sys.stderr)
    if args.fake:
        sys.exit(0)
    if not args.verbose:
        sys.stdout.flush()
        _quiet_stdout()
    from casstore.cli.main import cli

    cli.main(args=args.argv(), prog_name="cas")  # exits with the command's status


if __name__ == "__main__":
    main()
