"""``cas doctor``: probe a node's client setup, one line per check (``cvmfs_config probe``).

Each check answers one question an admin asks when ``/depot`` misbehaves, and
says either ``OK`` with what it found or ``FAIL`` with why; ``SKIP`` means it
could not be asked because an earlier check failed (or was switched off).  The
checks, in order:

``config``   the client config file parses (unknown keys, bad values);
``keys``     the trusted keys load (``.pub`` files exist and parse, hex keys are keys);
``mount``    (MOUNTPOINT given) it is a live casstore mount: its release is probed;
``source X`` for each configured source (folder or URL) on its own, no fail-over:
             it answers, and the release's newest (or given) revision verifies with
             the trusted keys, is not expired, is not older than a revision this
             node already saw, and its root tree is served and hashes right;
``cache``    ``cache_dir`` (and ``files/``, ``objects/`` in it) is a directory owned
             by this user and not writable by group or others (what ``cas mount``
             demands), or can be created; its filesystem has at least ``min_free``
             bytes free (default 1 GiB, ``--min-free``);
``cpu``      the host's CPU levels, and the variant of the release this node would
             mount (``arch`` of the config, or ``--arch``, forces a level);
``julia``    ``julia/bin/julia -e 1`` of the release starts: through the given
             MOUNTPOINT, else from a private mount (``cas exec``, needs root).

The checks do not change the node, except that the ``julia`` check mounts the
release privately (which records its revision as seen, as any mount does).  The
CLI (``casstore/cli/doctor_cmd.py``) prints the lines and exits with
:class:`~casstore.errors.DoctorFailed` if any check failed.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from casstore.client.config import ClientConfig, load
from casstore.errors import CasError, UnsafeFolder
from casstore.fileio.fsutil import require_private_dir
from casstore.releases.release import Release, SeenRevisions, load_verified, parse_spec

OK, FAIL, SKIP = "OK", "FAIL", "SKIP"
MIN_FREE = 1 << 30  # bytes free on the cache's filesystem below which `cache` fails
JULIA = "julia/bin/julia"  # where a depot built by `cas depot build` keeps its Julia
JULIA_TIMEOUT_S = 300.0
EXEC_MOUNTPOINT = Path("/depot")


@dataclass
class Check:
    """One probe's outcome: ``OK``, ``FAIL`` or ``SKIP``, and one line of detail."""

    name: str
    status: str
    detail: str

    def line(self) -> str:
        """``OK   name: detail`` (status padded to 4, so the names line up)."""
        return f"{self.status:<4} {self.name}: {self.detail}"

    def as_dict(self) -> dict:
        return {"check": self.name, "status": self.status, "detail": self.detail}


@dataclass
class Options:
    """What to probe; ``target`` is a release (``NAME``, ``NAME@N``) or a mount point."""

    config_path: Path | None = None
    target: str | None = None
    store: str | None = None  # overrides the config's source, as --store does for mount
    arch: str | None = None
    min_free: int = MIN_FREE
    julia: bool = True
    julia_timeout: float = JULIA_TIMEOUT_S
    exec_mountpoint: Path = EXEC_MOUNTPOINT


@dataclass
class _State:
    """What earlier checks found, for the later ones."""

    cfg: ClientConfig | None = None
    trusted: list[str] = field(default_factory=list)
    name: str | None = None
    revision: int | None = None
    mountpoint: Path | None = None  # a live mount to probe Julia through
    mount_variant: str | None = None
    release: Release | None = None  # the first that verified
    release_source: str | None = None
    variant_refused: str = ""  # set by the cpu check: no variant of the release runs here


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == FAIL]


def run(opts: Options, report: Callable[[Check], None] | None = None) -> list[Check]:
    """Run every check in order; ``report`` sees each as soon as it is known."""
    out: list[Check] = []
    st = _State()

    def add(check: Check) -> None:
        out.append(check)
        if report is not None:
            report(check)

    add(check_config(opts, st))
    if st.cfg is None:
        for name in ("keys", "source", "cache", "cpu", "julia"):
            add(Check(name, SKIP, "the config does not load"))
        return out
    add(check_keys(st))
    if opts.target is not None:
        target = _target(opts.target, st)
        if target is not None:
            add(target)
    for check in check_sources(opts, st):
        add(check)
    add(check_cache(st.cfg, opts.min_free))
    add(check_cpu(opts, st))
    add(check_julia(opts, st))
    return out


# -- config and keys ---------------------------------------------------------------

def check_config(opts: Options, st: _State) -> Check:
    from casstore.client.config import default_path

    path = opts.config_path or default_path()
    try:
        st.cfg = load(path, required=True)
    except CasError as exc:
        return Check("config", FAIL, str(exc))
    src = opts.store or st.cfg.source
    return Check("config", OK, f"{path} (source {_show_source(src)}, cache_dir "
                               f"{st.cfg.cache_dir}, state_dir {st.cfg.state_dir})")


def _show_source(src: object) -> str:
    if isinstance(src, list):
        return ", ".join(map(str, src))
    return "none" if src is None else str(src)


def check_keys(st: _State) -> Check:
    """Each trusted key loads; a missing .pub file is named (not "not a key")."""
    assert st.cfg is not None
    cfg = st.cfg
    base = cfg.path.resolve().parent if cfg.path else Path.cwd()
    for ref in cfg.trusted_keys:
        if "/" in ref or ref.endswith(".pub"):  # a file, relative to the config
            path = base / os.path.expanduser(ref)
            if not path.is_file():
                return Check("keys", FAIL, f"key file {path} does not exist (or is not a file)")
    try:
        st.trusted = cfg.trusted()
    except CasError as exc:
        return Check("keys", FAIL, str(exc))
    except OSError as exc:
        return Check("keys", FAIL, f"{exc.filename}: {exc.strerror}")
    if not st.trusted:
        return Check("keys", FAIL, "no trusted_keys in the config: nothing can be mounted")
    shown = ", ".join(k[:16] + "..." for k in st.trusted)
    return Check("keys", OK, f"{len(st.trusted)} trusted ({shown})")


# -- what to probe -------------------------------------------------------------------

def _target(target: str, st: _State) -> Check | None:
    """A release spec (no ``/``: names never hold one) or a mount point."""
    if "/" not in target:
        try:
            st.name, st.revision = parse_spec(target)
        except CasError as exc:
            return Check("release", FAIL, str(exc))
        return None
    return check_mount(Path(target), st)


def check_mount(mountpoint: Path, st: _State) -> Check:
    """A casstore mount in this namespace: its status file names the release."""
    from casstore.client.status import read_status

    assert st.cfg is not None
    try:
        info = read_status(st.cfg, mountpoint)
    except CasError as exc:
        return Check("mount", FAIL, str(exc))
    st.name = info.get("release")
    gone = [*([] if info.get("mounted") else ["not mounted"]),
            *([] if info.get("alive") else [f"daemon pid {info.get('pid')} gone"])]
    if gone:
        return Check("mount", FAIL, f"{mountpoint}: status file of {st.name} revision "
                                    f"{info.get('revision')}, but {' and '.join(gone)}")
    st.mountpoint = mountpoint
    st.mount_variant = info.get("variant")
    return Check("mount", OK, f"{mountpoint}: {st.name} revision {info.get('revision')}, "
                              f"variant {info.get('variant') or 'none'}, daemon pid "
                              f"{info.get('pid')}, {info.get('errors', {}).get('eio', 0)} EIO")


# -- sources -------------------------------------------------------------------------

def _source_specs(opts: Options, cfg: ClientConfig) -> list[str | Path]:
    src = opts.store or cfg.source
    if src is None:
        return []
    return list(src) if isinstance(src, list) else [src]


def check_sources(opts: Options, st: _State) -> list[Check]:
    assert st.cfg is not None
    specs = _source_specs(opts, st.cfg)
    if not specs:
        return [Check("source", FAIL, "no source: set 'source' in the config (or --store)")]
    return [check_source(spec, st) for spec in specs]


def check_source(spec: str | Path, st: _State) -> Check:
    """One source on its own (no fail-over, no object cache): it answers, and each
    release probed verifies and has its root tree."""
    from casstore.client.connect import http_settings
    from casstore.sources import open_source

    assert st.cfg is not None
    name = f"source {spec}"
    try:
        source = open_source(spec, http=http_settings(st.cfg))
    except CasError as exc:
        return Check(name, FAIL, f"unreachable: {exc}")
    try:
        try:  # casstore.json (a plain mirror may lack it), then the release index
            source.read_format()
            names = [st.name] if st.name else source.release_names()
        except CasError as exc:
            return Check(name, FAIL, f"unreachable: {exc}")
        if not names:
            return Check(name, FAIL, "reachable, but it serves no releases")
        if not st.trusted:
            return Check(name, SKIP, f"reachable ({len(names)} release(s)); not verified: "
                                     "no trusted keys")
        done = []
        for rel_name in names:
            try:
                rel = _verify_release(source, rel_name, st)
            except CasError as exc:
                return Check(name, FAIL, f"release {rel_name}: {exc}")
            done.append(rel)
            if st.release is None and st.name is not None:
                st.release, st.release_source = rel, str(spec)
        return Check(name, OK, "; ".join(_describe(r) for r in done))
    except OSError as exc:
        return Check(name, FAIL, f"unreachable: {exc.strerror or exc}")
    finally:
        source.close()


def _verify_release(source, name: str, st: _State) -> Release:
    """Signature, trusted key, expiry, not older than seen; then the root tree is
    fetched and hashed.  Nothing is recorded (a probe is not a mount)."""
    from casstore.format.objects import ObjType
    from casstore.sources import fetch

    assert st.cfg is not None
    rel = load_verified(source, name, st.trusted, None, st.revision)
    SeenRevisions(st.cfg.seen_path).check(rel)
    fetch(source, rel.root_id, ObjType.TREE)
    return rel


def _describe(rel: Release) -> str:
    days = (rel.expires - time.time()) / 86400
    return (f"{rel.name} revision {rel.revision} verifies (trusted key, expires in "
            f"{days:.1f} days, root tree served)")


# -- cache ---------------------------------------------------------------------------

def check_cache(cfg: ClientConfig, min_free: int) -> Check:
    """What ``cas mount`` demands of ``cache_dir`` (filecache.secure_dir), and room."""
    path = cfg.cache_dir
    uid = os.geteuid()
    if not os.path.lexists(path):
        parent = _existing_parent(path)
        if not os.access(parent, os.W_OK | os.X_OK):
            return Check("cache", FAIL, f"{path} does not exist and {parent} is not writable "
                                        f"by uid {uid}")
        return _free(f"{path} does not exist yet (cas mount creates it 0700 in {parent})",
                     parent, min_free, cfg)
    for folder in (path, path / "files", path / "objects"):
        if folder != path and not os.path.lexists(folder):
            continue
        why = _unsafe(folder, uid)
        if why:
            return Check("cache", FAIL, why)
    mode = stat.S_IMODE(os.lstat(path).st_mode)
    return _free(f"{path} owned by uid {uid}, mode {mode:04o}", path, min_free, cfg)


def _unsafe(folder: Path, uid: int) -> str:
    """The refusal ``cas mount`` would raise for ``folder`` (UnsafeFolder), or ""."""
    try:
        require_private_dir(folder, "cache folder", "cas mount refuses it; chown / chmod go-w",
                            uid)
    except UnsafeFolder as exc:
        return str(exc)
    return ""


def _existing_parent(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _free(what: str, where: Path, min_free: int, cfg: ClientConfig) -> Check:
    vfs = os.statvfs(where)
    free = vfs.f_bavail * vfs.f_frsize
    text = (f"{what}; {_size(free)} free (threshold {_size(min_free)}; cache_size "
            f"{_size(cfg.cache_size)})")
    if free < min_free:
        return Check("cache", FAIL, f"{what}; only {_size(free)} free on its filesystem, "
                                    f"below the threshold of {_size(min_free)}")
    return Check("cache", OK, text)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# -- CPU and variant -----------------------------------------------------------------

def check_cpu(opts: Options, st: _State) -> Check:
    from casstore.client.selection import choose_level
    from casstore.releases.variants import host_levels

    assert st.cfg is not None
    try:
        host = host_levels()
    except Exception as exc:  # archspec on an unknown CPU: say so, do not crash
        return Check("cpu", FAIL, f"cannot detect the CPU level: {exc}")
    forced = opts.arch or st.cfg.arch
    head = (f"host {host[0] if host else '?'}"
            + (f", forced {forced} ({'--arch' if opts.arch else 'config arch'})"
               if forced else ""))
    if st.release is None:
        return Check("cpu", OK if not forced else _known(forced),
                     f"{head}; no verified release to choose a variant from")
    rel = st.release
    try:
        level, how = choose_level(rel, opts.arch, st.cfg.arch)
    except CasError as exc:
        st.variant_refused = str(exc)
        return Check("cpu", FAIL, f"{head}: {exc}")
    offered = ", ".join(sorted(rel.variants)) or "none"
    text = f"{head}; {rel.name} offers {offered}: variant {level or 'none'} ({how})"
    if st.mount_variant is not None and st.mount_variant != level:
        text += f"; the running mount serves {st.mount_variant}"
    return Check("cpu", OK, text)


def _known(level: str) -> str:
    from casstore.releases.variants import all_levels

    return OK if level in all_levels() else FAIL


# -- Julia ---------------------------------------------------------------------------

def check_julia(opts: Options, st: _State) -> Check:
    """``julia -e 1`` of the release, through the live mount or a private one."""
    if not opts.julia:
        return Check("julia", SKIP, "not asked (--no-julia)")
    if st.mountpoint is not None:
        return _julia_at(st.mountpoint, None, opts)
    if st.release is None:
        return Check("julia", SKIP, "no verified release to start Julia from"
                                    + ("" if st.name else " (give a RELEASE or MOUNTPOINT)"))
    if st.variant_refused:
        return Check("julia", SKIP, "no variant of the release can run here (cpu)")
    missing = _julia_missing(st, opts)
    if missing:
        return Check("julia", FAIL, missing)
    import shutil

    if os.geteuid() != 0 or not shutil.which("unshare"):
        return Check("julia", SKIP, "a private mount needs root and unshare(1); give the "
                                    "MOUNTPOINT of a running mount instead")
    return _julia_at(opts.exec_mountpoint, st, opts)


def _julia_missing(st: _State, opts: Options) -> str:
    """Whether the verified release (root + chosen variant) has julia/bin/julia at all,
    asked of the store without mounting."""
    from casstore.client.connect import open_client_source
    from casstore.client.selection import choose_level
    from casstore.errors import NotFound
    from casstore.format.trees import Kind
    from casstore.view.release_view import release_vfs

    assert st.cfg is not None and st.release is not None
    rel = st.release
    try:
        level, _ = choose_level(rel, opts.arch, st.cfg.arch)
    except CasError:
        level = None
    source = open_client_source(st.cfg, st.release_source)
    try:
        node = release_vfs(rel, level, source).lookup("/" + JULIA)
        if node.entry.kind == Kind.DIR:
            return f"{rel.name}: /{JULIA} is a directory"
    except NotFound:
        return f"{rel.name} revision {rel.revision} has no /{JULIA} (not a Julia depot?)"
    except CasError as exc:
        return f"{rel.name}: cannot look up /{JULIA}: {exc}"
    finally:
        source.close()
    return ""


def _julia_argv(root: Path) -> list[str]:
    return [str(root / JULIA), "--startup-file=no", "--history-file=no", "-e", "1"]


def _julia_at(mountpoint: Path, st: _State | None, opts: Options) -> Check:
    """Run it with a fresh scratch depot in front, every other JULIA_* dropped; through
    ``cas exec`` when ``st`` names a release to mount privately."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JULIA_")}
    env.pop("CAS_DEBUG", None)
    with tempfile.TemporaryDirectory(prefix="cas-doctor-") as scratch:
        env["JULIA_DEPOT_PATH"] = f"{scratch}:{mountpoint}"
        argv = _julia_argv(mountpoint)
        where = f"from {mountpoint}"
        if st is not None:
            assert st.release is not None
            rel = st.release
            argv = [sys.executable, "-m", "casstore", "-q", "exec",
                    f"{rel.name}@{rel.revision}", "--mountpoint", str(mountpoint),
                    *(["--config", str(opts.config_path)] if opts.config_path else []),
                    *(["--arch", opts.arch] if opts.arch else []), "--", *argv]
            if opts.store:
                argv[3:3] = ["--store", str(opts.store)]
            where = f"from {rel.name}@{rel.revision} mounted privately at {mountpoint}"
        elif not (mountpoint / JULIA).exists():
            return Check("julia", FAIL, f"no {mountpoint}/{JULIA} (not a Julia depot?)")
        t0 = time.monotonic()
        try:
            p = subprocess.run(argv, capture_output=True, text=True, env=env,
                               timeout=opts.julia_timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return Check("julia", FAIL, f"julia -e 1 {where}: no exit within "
                                        f"{opts.julia_timeout:.0f} s")
        except OSError as exc:
            return Check("julia", FAIL, f"julia -e 1 {where}: {exc.strerror or exc}")
    took = time.monotonic() - t0
    if p.returncode != 0:
        last = next((ln.strip() for ln in reversed(p.stderr.splitlines()) if ln.strip()),
                    "no message")
        return Check("julia", FAIL, f"julia -e 1 {where} exited with {p.returncode}: "
                                    f"{last[:300]}")
    return Check("julia", OK, f"julia -e 1 {where} started and exited 0 in {took:.1f} s")
