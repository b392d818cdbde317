"""The CLI says what it does and what to do: the source a mount used, errors that
name the fix.  Real ``cas`` processes and real mounts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from casstore.store.writable import Store

from fuse_fixtures import CAS, ROOT, Kit, mounted


def cas(*args: str, env: dict | None = None, timeout: float = 60,
        user: str | None = None) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    full.pop("CAS_DEBUG", None)
    return subprocess.run([*CAS, *args], capture_output=True, text=True, env=full,
                          timeout=timeout, user=user)


def test_config_source_wins_over_exported_cas_store(kit: Kit, tmp_path: Path) -> None:
    """An exported CAS_STORE (another store, holding a validly signed 'rel' of other
    content) does not replace the config's source for a mount; the mount prints the
    source it used."""
    src = kit.base / "src"
    src.mkdir()
    (src / "which.txt").write_text("configured source\n")
    kit.publish("rel", 1, kit.put(src))
    other = Store.open(tmp_path / "elsewhere", create=True)
    (tmp_path / "osrc").mkdir()
    (tmp_path / "osrc" / "which.txt").write_text("the exported store\n")
    from casstore.store.snapshot import put_paths

    kit.store, saved = other, kit.store
    try:
        kit.publish("rel", 5, put_paths(other, [tmp_path / "osrc"]))
    finally:
        kit.store = saved
        other.close()
    mp = kit.base / "mnt"
    mp.mkdir()
    try:
        res = cas("--json", "mount", "--config", str(kit.config), "rel", str(mp),
                  env={"CAS_STORE": str(tmp_path / "elsewhere")})
        assert res.returncode == 0, res.stderr
        info = json.loads(res.stdout)
        assert info["source"] == str(kit.base / "store") and info["revision"] == 1, info
        assert (mp / "which.txt").read_text() == "configured source\n"
    finally:
        if mounted(mp):
            cas("umount", str(mp))
    res = cas("mount", "--config", str(kit.config), "rel", str(mp))
    try:
        assert res.returncode == 0, res.stderr
        assert f" from {kit.base / 'store'} " in res.stdout, res.stdout
    finally:
        if mounted(mp):
            cas("umount", str(mp))
