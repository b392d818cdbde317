"""``cas mount``, ``cas umount``, ``cas status`` and ``cas reload``: the node side."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.client.config import ClientConfig, load

if TYPE_CHECKING:
    from casstore.client.selection import Selection

CONFIG_HELP = "Client config TOML (default: $CAS_CONFIG, else /etc/casstore/client.toml)."


def _config(path: Path | None) -> ClientConfig:
    return load(path)


def _explicit_store(ctx: Ctx, cfg: ClientConfig | None) -> str | None:
    """Where a mount's objects come from, if not the config's 'source': ``--store``
    always wins (given on this command line); ``$CAS_STORE`` only when the config
    names no source, so an exported variable meant for `cas put` never replaces a
    node's configured server.  The XDG default never does.  Kept as given (a
    string), so an http(s) URL reaches open_source intact."""
    if click.get_current_context().find_root().params.get("store"):
        return ctx.store_spec
    if cfg is not None and cfg.source is not None:
        return None
    return os.environ.get("CAS_STORE") or None


def config_source(path: Path | None) -> ClientConfig | None:
    """The config, or None if it does not load (``cas doctor`` reports that itself)."""
    from casstore.errors import CasError

    try:
        return load(path)
    except CasError:
        return None


@command(cli, "mount")
@click.argument("release")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--config", "config_path", type=click.Path(path_type=Path), help=CONFIG_HELP)
@click.option("--arch", metavar="LEVEL",
              help="Force a CPU level (x86-64, x86-64-v2, x86-64-v3, x86-64-v4) instead of "
                   "detecting the host's.")
@click.option("--revision", type=int,
              help="Mount this revision instead of the newest (pins: no following).")
@click.option("--follow/--no-follow", default=None,
              help="Follow new revisions (default: the config's 'follow').")
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground (logs to stderr).")
@click.option("--no-prefetch", is_flag=True,
              help="Do not replay the release's prefetch list on mount.")
@click.option("--record-access", type=click.Path(path_type=Path), hidden=True,
              help="Write the paths served to FILE at unmount (cas depot build).")
@click.option("--fsname", hidden=True,
              help="The mount's source in the mount table (mount.fuse.cas: as mount(8) "
                   "was given it, so `mount -a` finds an fstab line already mounted).")
@pass_ctx
def mount(ctx: Ctx, release: str, mountpoint: Path, config_path: Path | None,
          arch: str | None, revision: int | None, follow: bool | None, foreground: bool,
          no_prefetch: bool, record_access: Path | None, fsname: str | None) -> None:
    """Mount signed release RELEASE read-only at MOUNTPOINT.

    \b
    Before mounting, the newest revision (or --revision) is verified against the
    trusted_keys of the client config: unsigned, tampered, expired, wrong-key and
    older-than-seen revisions are refused, each with its own exit code (11-15).
    The best CPU variant this host can run is chosen (or --arch), and printed;
    a release with no variant at or below that level is refused (exit 27).
    Objects come from --store, else the config's 'source' (which may be a
    read-only CVMFS/NFS folder); the client caches only in its own cache_dir.
    Without --foreground the daemon detaches once the mount is in place.
    If the release carries a prefetch list for the chosen variant, its objects
    are fetched into the cache in the background (progress: cas status).
    Unmount with 'cas umount MOUNTPOINT' or SIGTERM to the daemon.

    \b
    With 'follow = true' in the config (or --follow) the mount checks for a newer
    revision every 'ttl' and on 'cas reload MOUNTPOINT', verifies it the same way
    and switches to it; open files keep their revision.  NAME@N or --revision N
    pins the mount (no following); so do cas exec's private per-job mounts.
    """
    from casstore.client.follow import follow_policy
    from casstore.client.fuse.mount import canon, preflight, serve
    from casstore.client.selection import select
    from casstore.client.watchdog import owner_from_env
    from casstore.releases.release import parse_spec

    preflight()
    cfg = load(config_path, required=True)
    store = _explicit_store(ctx, cfg)
    policy = follow_policy(cfg, follow,
                           pinned=revision is not None or parse_spec(release)[1] is not None,
                           owned=bool(owner_from_env()), recording=record_access is not None)
    p = select(release, cfg, store, arch, revision)
    info = {"release": p.release.name, "revision": p.release.revision, "variant": p.level,
            "variant_choice": p.how, "mountpoint": str(canon(mountpoint)),
            "offline": p.offline or None, "following": policy.follow,
            "source": str(p.source_path)}
    ctx.emit(info, mounting_text(p, mountpoint, policy.ttl if policy.follow else None))
    record = record_access.resolve() if record_access else None  # the daemon cds to /
    serve(p, cfg, mountpoint, foreground, record_to=record, prefetch=not no_prefetch,
          policy=policy, arch=arch, fsname=fsname)


def mounting_text(p: Selection, mountpoint: Path, follow_ttl: float | None) -> str:
    """The line a mount prints: what is mounted where, from which source, and which
    variant and why."""
    return (f"mounting {p.release.name} revision {p.release.revision} at {mountpoint} "
            f"from {p.source_path} (variant: {p.level or 'none'}, {p.how})"
            + (f", following every {follow_ttl:g} s" if follow_ttl is not None else "")
            + (f"\n{p.offline}" if p.offline else ""))


@command(cli, "umount")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--config", "config_path", type=click.Path(path_type=Path), help=CONFIG_HELP)
@click.option("-z", "--lazy", is_flag=True, help="Detach now even if files are in use.")
@pass_ctx
def umount(ctx: Ctx, mountpoint: Path, config_path: Path | None, lazy: bool) -> None:
    """Unmount a casstore mount and wait for its daemon to exit.

    \b
    Succeeds only once the daemon has exited.  Exit 28: not a casstore FUSE mount
    (fstype fuse.cas), refused.  Exit 29: busy (use --lazy).  Exit 33: unmounted here
    but the daemon lives on; the message names what holds it (another mount
    namespace's copy of the mount and its PIDs, or open files after --lazy).
    """
    from casstore.client.fuse.unmount import unmount

    pid = unmount(_config(config_path), mountpoint, lazy)
    ctx.emit({"unmounted": str(mountpoint), "daemon_pid": pid},
             f"unmounted {mountpoint}" + (f" (daemon {pid} exited)" if pid else ""))


@command(cli, "status")
@click.argument("mountpoint", type=click.Path(path_type=Path), required=False)
@click.option("--config", "config_path", type=click.Path(path_type=Path), help=CONFIG_HELP)
@click.option("--all", "all_", is_flag=True,
              help="List every casstore mount on the host, cas exec mounts in private "
                   "namespaces included (needs root to see other namespaces).")
@pass_ctx
def status(ctx: Ctx, mountpoint: Path | None, config_path: Path | None, all_: bool) -> None:
    """Show what is mounted at MOUNTPOINT: release, revision, variant, cache, errors.

    \b
    With --all (and no MOUNTPOINT): one line per mount, with its mount namespace,
    daemon PID, owner PID (the `cas exec` that owns it, else -) and state:
    mounted, not mounted (daemon alive, mount gone), dead (a stale status file
    left by a killed daemon: shown, never used), damaged (an unreadable file), or
    copy (a namespace's copy of a mount whose daemon runs in another namespace).
    """
    from casstore.client.status import read_status
    from casstore.errors import UsageError

    if all_ == (mountpoint is not None):
        raise UsageError("give either MOUNTPOINT or --all")
    if all_:
        _status_all(ctx, _config(config_path))
        return
    st = read_status(_config(config_path), mountpoint)
    cache = st.get("cache", {})
    errors = st.get("errors", {})
    pf = st.get("prefetch") or {}
    text = "\n".join([
        f"mountpoint: {st.get('mountpoint')}  ({'mounted' if st['mounted'] else 'NOT mounted'}, "
        f"daemon pid {st.get('pid')} {'alive' if st['alive'] else 'gone'})",
        f"release:    {st.get('release')} revision {st.get('revision')}",
        f"variant:    {st.get('variant') or 'none'} ({st.get('variant_choice')})",
        f"source:     {st.get('source')}"
        + (f"\noffline:    {st['offline']}" if st.get("offline") else ""),
        f"cache:      {cache.get('bytes', 0)} of {cache.get('max_bytes', 0)} bytes in "
        f"{cache.get('files', 0)} files at {cache.get('dir')}",
        f"prefetch:   {pf.get('state', 'off')}: {pf.get('done', 0)}/{pf.get('total', 0)} "
        f"objects, {pf.get('bytes_done', 0)}/{pf.get('bytes_total', 0)} bytes, "
        f"{pf.get('errors', 0)} errors, {pf.get('files_warmed', 0)} files warmed",
        f"errors:     {errors.get('eio', 0)} EIO ({errors.get('corrupt', 0)} corrupt, "
        f"{errors.get('missing', 0)} missing, {errors.get('internal', 0)} internal)",
        *_follow_lines(st),
    ])
    ctx.emit(st, text)


def _status_all(ctx: Ctx, cfg: ClientConfig) -> None:
    from casstore.client.mounttable import mount_ns
    from casstore.client.status import all_mounts

    rows = all_mounts(cfg)
    here = mount_ns()
    head = ("MOUNTPOINT", "RELEASE", "REV", "VARIANT", "NAMESPACE", "PID", "OWNER", "STATE")
    table = [head] + [(
        str(r.get("mountpoint") or r.get("status_file")), str(r.get("release") or "-"),
        str(r.get("revision") or "-"), str(r.get("variant") or "-"),
        f"{r.get('mount_ns')}{' (this)' if r.get('mount_ns') == here else ''}",
        str(r.get("pid") or "-"), str(r.get("owner") or "-"),
        _state_text(r),
    ) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in table)
    ctx.emit(rows, text if rows else "no casstore mounts")


def _state_text(row: dict) -> str:
    if row["state"] == "copy":
        return f"copy (of the mount of daemon {row.get('pid')} in {row.get('daemon_ns')})"
    return row["state"] + ("" if row.get("status_file", "") is not None else
                           " (no status file)")


def _ago(t: float | None) -> str:
    return "never" if not t else f"{max(0.0, time.time() - t):.0f} s ago"


def _follow_lines(st: dict) -> list[str]:
    """``cas status`` lines about revision following (casstore.client.follow)."""
    if not st.get("following"):
        return ["following:  no (pinned at mount)"]
    f = st.get("follow") or {}
    lines = [f"following:  every {f.get('ttl', 0):g} s; last check {_ago(f.get('last_check'))},"
             f" last successful {_ago(f.get('last_ok'))}; {f.get('switches', 0)} switches"]
    if f.get("error"):
        lines.append(f"check:      FAILED: {f['error']}")
    rej = f.get("rejected")
    if rej:
        lines.append(f"rejected:   revision {rej.get('revision')} ({rej.get('error')}): "
                     f"{rej.get('reason')}")
    return lines


@command(cli, "reload")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--config", "config_path", type=click.Path(path_type=Path), help=CONFIG_HELP)
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Seconds to wait for the check to finish.")
@pass_ctx
def reload(ctx: Ctx, mountpoint: Path, config_path: Path | None, timeout: float) -> None:
    """Make a following mount check for a new revision now, and show the outcome.

    Sends SIGHUP to the mount's daemon (the pid in its status file), then waits
    until the daemon reports a finished check.  Exit 56 if the mount does not
    follow (pinned), 57 if no check finished within --timeout.
    """
    from casstore.client.status import read_status
    from casstore.errors import NotFollowing, ReloadTimeout

    cfg = _config(config_path)
    st = read_status(cfg, mountpoint)
    if not st.get("following"):
        raise NotFollowing(f"{mountpoint} is pinned at revision {st.get('revision')} "
                           "(mounted without following); nothing to reload")
    if not (st.get("mounted") and st.get("alive")):
        raise NotFollowing(f"{mountpoint}: the mount or its daemon is gone")
    before = (st.get("follow") or {}).get("checks", 0)
    os.kill(int(st["pid"]), signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while True:
        st = read_status(cfg, mountpoint)
        f = st.get("follow") or {}
        if f.get("checks", 0) > before:
            break
        if time.monotonic() > deadline or not st.get("alive"):
            raise ReloadTimeout(f"{mountpoint}: no check finished within {timeout:g} s")
        time.sleep(0.1)
    rej = f.get("rejected")
    text = (f"{mountpoint}: revision {st.get('revision')}"
            + (f"; check failed: {f['error']}" if f.get("error") else "")
            + (f"; rejected revision {rej['revision']}: {rej['reason']}" if rej else ""))
    ctx.emit({"revision": st.get("revision"), "follow": f}, text)
