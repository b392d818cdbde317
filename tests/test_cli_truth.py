"""The CLI says what it does and what to do: the source a mount used, errors that
name the fix.  Real ``cas`` processes and real mounts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from casstore.errors import MountError, NotFound, UsageError
from casstore.releases.release import Release, keygen, load_secret, sign
from casstore.store.snapshot import put_paths
from casstore.store.writable import Store

from fuse_fixtures import CAS, ROOT, Kit, mounted


def cas(*args: str, env: dict | None = None, timeout: float = 60,
        user: str | None = None) -> subprocess.CompletedProcess:
    """A real ``cas``; as ``user``, through the system's python3 (the venv's interpreter
    lives under root's private home) with this checkout and the venv's packages."""
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    full.pop("CAS_DEBUG", None)
    argv = [*CAS, *args]
    if user is not None:
        full["PYTHONPATH"] = f"{ROOT}:{sysconfig.get_paths()['purelib']}"
        argv = ["/usr/bin/python3", *argv[1:]]
    return subprocess.run(argv, capture_output=True, text=True, env=full, timeout=timeout,
                          user=user, cwd="/")


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


@pytest.fixture
def public_kit(tmp_path: Path) -> Iterator[Path]:
    """A store, key, release 'demo' and client config in a folder the user ``nobody``
    can read (pytest's own tmp folders are private to root)."""
    base = Path(tempfile.mkdtemp(prefix="cas-ops-", dir="/tmp"))
    try:
        base.chmod(0o755)
        store = Store.open(base / "store", create=True)
        keygen(base / "k")
        (base / "src").mkdir()
        (base / "src" / "a").write_text("a\n")
        now = int(time.time())
        root = put_paths(store, [base / "src"])
        store.write_release("demo", 1, sign(Release("demo", 1, str(root), now - 10, now + 3600,
                                                    {}, None), load_secret(base / "k")))
        store.close()
        (base / "mnt").mkdir()
        (base / "c.toml").write_text('trusted_keys = ["k.pub"]\nsource = "store"\n'
                                     'cache_dir = "cache"\nstate_dir = "state"\n')
        subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _one_line(res: subprocess.CompletedProcess) -> str:
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    return res.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as nobody")
def test_not_root_says_mounting_needs_root(public_kit: Path) -> None:
    res = cas("mount", "--config", str(public_kit / "c.toml"), "demo",
              str(public_kit / "mnt"), user="nobody")
    assert res.returncode == MountError.exit_code
    assert "mounting needs root" in _one_line(res) and "sudo" in res.stderr
    assert not mounted(public_kit / "mnt")
    assert not (public_kit / "state").exists()  # refused before touching anything


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root")
def test_no_dev_fuse_names_the_fix(public_kit: Path) -> None:
    """In a private namespace with an empty /dev: one line naming /dev/fuse and how to
    provide it (no 'libfuse error')."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                          'mount -t tmpfs none /dev && exec "$@"', "sh", *CAS, "mount",
                          "--config", str(public_kit / "c.toml"), "demo",
                          str(public_kit / "mnt")],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == MountError.exit_code, res.stderr
    line = _one_line(res)
    assert "/dev/fuse does not exist" in line and "modprobe fuse" in line
    assert "libfuse error" not in line


def test_missing_config_names_the_file_and_what_to_write(public_kit: Path) -> None:
    env = {"CAS_CONFIG": str(public_kit / "nope.toml")}
    res = cas("mount", "demo", str(public_kit / "mnt"), env=env)
    assert res.returncode == UsageError.exit_code
    line = _one_line(res)
    assert str(public_kit / "nope.toml") in line and "trusted_keys" in line
    assert "source" in line and "--config" in line
    if not Path("/etc/casstore/client.toml").exists():
        res = cas("mount", "demo", str(public_kit / "mnt"))
        assert "/etc/casstore/client.toml does not exist" in _one_line(res)


def test_release_typo_suggests_the_closest_name(public_kit: Path) -> None:
    res = cas("mount", "--config", str(public_kit / "c.toml"), "dmeo",
              str(public_kit / "mnt"))
    assert res.returncode == NotFound.exit_code
    assert "did you mean 'demo'?" in _one_line(res)
    assert not mounted(public_kit / "mnt")


def test_json_after_the_subcommand(public_kit: Path) -> None:
    """``cas status --all --json`` and ``cas release list --json`` as ``cas --json ...``."""
    cfg = str(public_kit / "c.toml")
    before = cas("--store", str(public_kit / "store"), "--json", "release", "list")
    after = cas("--store", str(public_kit / "store"), "release", "list", "--json")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == json.loads(before.stdout)
    assert [r["name"] for r in json.loads(after.stdout)] == ["demo"]
    # The host's mounts (other jobs') may change between two calls: only the shape.
    rows = cas("status", "--all", "--config", cfg, "--json")
    assert rows.returncode == 0 and isinstance(json.loads(rows.stdout), list), rows.stderr
    res = cas("status", "--config", cfg, str(public_kit / "mnt"), "--json")
    assert res.returncode == MountError.exit_code and "no such option" not in res.stderr
