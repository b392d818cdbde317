"""``cas doctor``'s checks of the node's setup: config, keys, the mount or release
to probe, each source on its own, and the cache folder (see :mod:`casstore.client.doctor`)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from casstore.client.config import ClientConfig, load
from casstore.client.doctor_model import FAIL, OK, SKIP, Check, Options, State
from casstore.errors import CasError, UnsafeFolder
from casstore.fileio.fsutil import require_private_dir
from casstore.releases.release import Release, SeenRevisions, load_verified, parse_spec

# -- config and keys ---------------------------------------------------------------

def check_config(opts: Options, st: State) -> Check:
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


def check_keys(st: State) -> Check:
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

def target_check(target: str, st: State) -> Check | None:
    """A release spec (no ``/``: names never hold one) or a mount point."""
    if "/" not in target:
        try:
            st.name, st.revision = parse_spec(target)
        except CasError as exc:
            return Check("release", FAIL, str(exc))
        return None
    return check_mount(Path(target), st)


def check_mount(mountpoint: Path, st: State) -> Check:
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


def check_sources(opts: Options, st: State) -> list[Check]:
    assert st.cfg is not None
    specs = _source_specs(opts, st.cfg)
    if not specs:
        return [Check("source", FAIL, "no source: set 'source' in the config (or --store)")]
    return [check_source(spec, st) for spec in specs]


def check_source(spec: str | Path, st: State) -> Check:
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


def _verify_release(source, name: str, st: State) -> Release:
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
