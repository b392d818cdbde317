"""``cas doctor``'s checks of what runs here: the host's CPU level and the variant
it picks, and whether the release's Julia starts (see :mod:`casstore.client.doctor`)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from casstore.client.doctor_model import FAIL, JULIA, OK, SKIP, Check, Options, State
from casstore.errors import CasError

# -- CPU and variant -----------------------------------------------------------------

def check_cpu(opts: Options, st: State) -> Check:
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

def check_julia(opts: Options, st: State) -> Check:
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


def _julia_missing(st: State, opts: Options) -> str:
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


def _julia_at(mountpoint: Path, st: State | None, opts: Options) -> Check:
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
