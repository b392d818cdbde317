"""Recording a release's prefetch lists at ``cas depot build`` time (FORMAT §6.5).

Why publish twice: a list must be recorded from a *real* mount (the FUSE reads a
real Julia start makes, the sysimage's mmap page-ins included), and a node only
mounts signed releases.  So the builder publishes revision N without lists (what
``_publish`` already did), mounts N once per variant with ``cas exec
--record-access`` in a private namespace (with a throw-away client config that
trusts the signing key), runs the spec's ``[job]`` (its setup once first, not
recorded), turns each record into a list over the store, and publishes N+1: the
same trees, ``meta`` plus ``prefetch``.  No unsigned view is ever mounted.  A
newest revision that already has lists for every level is left alone.

Recording is best effort: without root/unshare, or when the job fails, the
build keeps revision N (no list) and says so; nodes then fetch on demand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from casstore.errors import CasError
from casstore.format.objects import ObjectId
from casstore.releases.prefetch import build_list, load_accesses, store_list
from casstore.releases.release import PREFETCH_META_KEY, Release, load_secret
from casstore.view.release_view import release_vfs

JULIA = "/depot/julia/bin/julia"
JOB_TIMEOUT_S = 1800.0
Log = Callable[[str], None]


def job_argv(build_dir: Path) -> tuple[list[str], list[str]]:
    """(command, setup) Julia argument lists from BUILD_DIR/meta.json, scripts as seen at
    /depot; without a ``[job]``, ``-e 'using <every package>'`` and no setup."""
    meta = json.loads((build_dir / "meta.json").read_text())
    job = meta.get("job")
    if isinstance(job, dict) and job.get("command"):
        cmd, setup = list(job["command"]), list(job.get("setup") or [])
        return ([f"/depot/{cmd[0]}", *cmd[1:]],
                [f"/depot/{setup[0]}", *setup[1:]] if setup else [])
    names = [p["name"] for p in meta.get("packages", []) if isinstance(p, dict)]
    return (["-e", f"using {', '.join(names)}"] if names else ["-e", "nothing"]), []


def _exec(store_path: Path, spec: str, config: Path, level: str | None, argv: list[str],
          scratch: Path, work: Path, record: Path | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JULIA_")}
    env["JULIA_DEPOT_PATH"] = f"{scratch}:/depot"
    cmd = [sys.executable, "-m", "casstore", "--store", str(store_path), "-q", "exec", spec,
           "--config", str(config), *(["--arch", level] if level else []), "--no-prefetch",
           *(["--record-access", str(record)] if record else []), "--",
           JULIA, "--startup-file=no", "--history-file=no", *argv]
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                          timeout=JOB_TIMEOUT_S)


def _client_config(tmp: Path, pub_hex: str) -> Path:
    cfg = tmp / "client.toml"
    cfg.write_text(f'trusted_keys = ["{pub_hex}"]\ncache_dir = "{tmp}/cache"\n'
                   f'state_dir = "{tmp}/state"\n')
    return cfg


def _tail(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def record_lists(store, store_path: Path, rel: Release, build_dir: Path, pub_hex: str,
                 log: Log) -> dict[str, ObjectId]:
    """Record every level of ``rel`` from a real mount; store the lists; their tree ids.

    Raises a CasError (nothing stored) if a level cannot be recorded."""
    from casstore.errors import JobError
    from casstore.store.snapshot import Snapshot

    command, setup = job_argv(build_dir)
    levels: list[str | None] = sorted(rel.variants) or [None]
    spec = f"{rel.name}@{rel.revision}"
    lists = {}
    with tempfile.TemporaryDirectory(prefix="cas-prefetch-") as tmp:
        t = Path(tmp)
        cfg = _client_config(t, pub_hex)
        work = t / "work"
        work.mkdir()
        if setup:
            (t / "scratch-setup").mkdir()
            p = _exec(store_path, spec, cfg, levels[0], setup, t / "scratch-setup", work, None)
            if p.returncode != 0:
                raise JobError(f"job setup failed ({p.returncode}): {_tail(p.stderr)}")
        for level in levels:
            scratch, rec = t / f"scratch-{level}", t / f"record-{level}.json"
            scratch.mkdir()
            p = _exec(store_path, spec, cfg, level, command, scratch, work, rec)
            if p.returncode != 0:
                raise JobError(f"job failed on {spec} ({level}): {_tail(p.stderr)}")
            accesses = load_accesses(rec)
            lists[level or ""] = build_list(release_vfs(rel, level, store), accesses)
            log(f"[prefetch] {level or 'no variant'}: {len(accesses)} paths, "
                f"{len(lists[level or ''].objects)} objects, "
                f"{lists[level or ''].total_bytes()} bytes")
    with store.lock(), Snapshot(store) as snap:
        return {lvl: store_list(snap, plist) for lvl, plist in lists.items()}


def record_release(store, store_path: Path, name: str, key: Path, build_dir: Path,
                   expires_days: float, log: Log) -> dict:
    """The one call ``cas depot build --release`` makes after publishing: record the
    newest revision's prefetch lists and publish them as the next revision."""
    from casstore.julia.namespace import namespaces_available
    from casstore.store.publish import latest_own, publish

    sk = load_secret(key)
    rel = latest_own(store, name, sk)
    if rel is None:
        return {"recorded": False, "note": "no release of ours to record"}
    want = set(rel.variants) or {""}
    try:
        have = set(rel.prefetch_ids())
    except CasError:
        have = set()
    if want <= have:
        return {"recorded": False, "revision": rel.revision, "note": "lists present"}
    if not namespaces_available():
        log("[prefetch] skipped: recording needs root and unshare(1)")
        return {"recorded": False, "note": "needs root and unshare(1)"}
    try:
        ids = record_lists(store, store_path, rel, build_dir,
                           sk.verify_key.encode().hex(), log)
    except (CasError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
        log(f"[prefetch] not recorded: {exc}")
        return {"recorded": False, "revision": rel.revision, "note": str(exc)[:300]}
    meta = {**rel.meta, PREFETCH_META_KEY: {k: str(v) for k, v in ids.items()}}
    new = publish(store, sk, name, rel.root, rel.variants, rel.baseline, meta, expires_days)
    log(f"[prefetch] {name} revision {new.revision} carries the lists")
    return {"recorded": True, "revision": new.revision,
            "lists": {k: str(v) for k, v in ids.items()}}
