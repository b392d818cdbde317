"""Real mounts from an HTTP source (Debian's nginx on loopback): `cas mount` with a
URL as the config's source, a server killed under a mount, and booting offline."""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest
from net_fixtures import NGINX, Nginx

from casstore.errors import UnsafeFolder
from casstore.fileio.fsutil import alive
from casstore.format.objects import ObjectId

from fuse_fixtures import Kit, Mounter, run_cas

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists(NGINX) or not os.path.exists("/dev/fuse"),
                                 reason="needs nginx and /dev/fuse")]


@pytest.fixture
def served(kit: Kit, request):
    """Release 'app' in the kit's store, nginx serving it, the client config on the URL."""
    src = kit.base / "src"
    (src / "lib").mkdir(parents=True)
    rnd = random.Random(3)
    files = {"lib/a.jl": rnd.randbytes(300_000), "b.bin": rnd.randbytes(600_000),
             "big.bin": rnd.randbytes(1_500_000), "small.txt": b"hello\n"}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    kit.publish("app", 1, kit.put(src))
    nginx = Nginx(kit.store.root, kit.base / "nginx").start()
    request.addfinalizer(nginx.stop)
    kit.config.write_text(
        'trusted_keys = ["release.key.pub"]\n'
        f'source = ["{nginx.url}"]\n'
        'cache_dir = "cache"\nstate_dir = "state"\nprefetch_min = "1M"\n'
        "connect_timeout = 2\nread_timeout = 2\nrequest_timeout = 5\n")
    return nginx, files


def _status(kit: Kit, mp: Path) -> dict:
    res = run_cas("--json", "status", "--config", str(kit.config), str(mp))
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _unmount(kit: Kit, mp: Path) -> None:
    res = run_cas("umount", "--config", str(kit.config), str(mp))
    assert res.returncode == 0, res.stderr


def test_mount_from_nginx(kit: Kit, mounter: Mounter, served) -> None:
    nginx, files = served
    mp = mounter.mount("app")
    for rel, data in files.items():
        assert (mp / rel).read_bytes() == data
    st = _status(kit, mp)
    assert nginx.url in st["source"] and not st.get("offline")
    assert any("/objects/" in r for r in nginx.requests())
    assert len(list((kit.base / "cache" / "objects").iterdir())) >= 4  # the object cache


def test_daemonised_http_mount_exits_after_unmount(kit: Kit, served) -> None:
    """Without --foreground libfuse forks in C: the daemon must not carry the parent's
    HTTP threads (it then hung at exit for ever, one leaked process per mount)."""
    _nginx, files = served
    mp = kit.base / "daemon"
    mp.mkdir()
    res = run_cas("mount", "--config", str(kit.config), "app", str(mp))
    assert res.returncode == 0, res.stderr
    try:
        pid = int(_status(kit, mp)["pid"])
        assert (mp / "big.bin").read_bytes() == files["big.bin"]
    finally:
        _unmount(kit, mp)
    deadline = time.monotonic() + 60
    while alive(pid):
        assert time.monotonic() < deadline, f"daemon {pid} still alive after unmount"
        time.sleep(0.05)
    log = next((kit.base / "state" / "mounts").glob("*.log")).read_text()
    assert "threads alive before daemonising" not in log
    assert "Unclosed client session" not in log


def test_server_killed_under_a_mount_then_back(kit: Kit, mounter: Mounter, served) -> None:
    nginx, files = served
    mp = mounter.mount("app", name="first")
    for rel in ("lib/a.jl", "big.bin", "small.txt"):  # b.bin is never read here
        assert (mp / rel).read_bytes() == files[rel]
    _unmount(kit, mp)
    mp = mounter.mount("app", name="second")  # fresh inodes: no kernel page cache
    port = nginx.port
    nginx.stop()
    for rel in ("lib/a.jl", "big.bin", "small.txt"):  # from the object cache
        assert (mp / rel).read_bytes() == files[rel]
    with pytest.raises(OSError) as info:
        (mp / "b.bin").read_bytes()
    assert info.value.errno == errno.EIO
    assert "failed on every server" in (kit.base / "second.out").read_text()  # logged
    assert _status(kit, mp)["errors"]["eio"] >= 1
    nginx.start(port)  # the server comes back: the mount recovers
    assert (mp / "b.bin").read_bytes() == files["b.bin"]


def test_boot_offline_mounts_the_last_verified_release(kit: Kit, mounter: Mounter,
                                                       served) -> None:
    nginx, files = served
    mp = mounter.mount("app", name="online")
    for rel, data in files.items():
        assert (mp / rel).read_bytes() == data
    _unmount(kit, mp)
    nginx.stop()  # the node reboots with no server reachable
    mp = mounter.mount("app", name="offline")
    for rel, data in files.items():
        assert (mp / rel).read_bytes() == data
    st = _status(kit, mp)
    assert "offline: using the last verified release" in st["offline"]
    text = run_cas("status", "--config", str(kit.config), str(mp)).stdout
    assert "offline:" in text
    # without the kept document, an offline node mounts nothing
    _unmount(kit, mp)
    (kit.base / "state" / "verified" / "app.release").unlink()
    res = run_cas("mount", "--config", str(kit.config), "app", str(kit.base / "offline"))
    assert res.returncode == 55, res.stderr
    assert res.stderr.startswith("cas: error:") and "Traceback" not in res.stderr


def test_cold_stat_storm_over_http_fetches_only_trees(kit: Kit, mounter: Mounter) -> None:
    """A cold ``find -type f | xargs stat`` of many small (packed) files, a chunk file
    and a blob, from nginx: every object requested is a tree; no pack, chunk or blob
    is fetched just to stat (inode numbers come from tree entries alone)."""
    from casstore.format.objects import ObjType
    from casstore.sources.base import stored_type
    from casstore.sources.local import LocalSource

    src = kit.base / "src"
    rnd = random.Random(17)
    for d in range(8):
        sub = src / f"pkg{d}" / "src"
        sub.mkdir(parents=True)
        for f in range(40):
            (sub / f"f{f}.jl").write_bytes(rnd.randbytes(rnd.randint(1, 4000)))
    (src / "one.so").write_bytes(rnd.randbytes(100_000))
    (src / "big.so").write_bytes(rnd.randbytes(5_000_000))
    kit.publish("app", 1, kit.put(src))
    nginx = Nginx(kit.store.root, kit.base / "nginx").start()
    try:
        kit.config.write_text(
            'trusted_keys = ["release.key.pub"]\n'
            f'source = ["{nginx.url}"]\ncache_dir = "cache"\nstate_dir = "state"\n')
        mp = mounter.mount("app")
        found = subprocess.run(f"find {mp} -type f -print0 | xargs -0 stat -c '%i %s'",
                               shell=True, capture_output=True, text=True, timeout=120)
        assert found.returncode == 0, found.stderr
        stats = found.stdout.split()
        assert len(stats) == 2 * (8 * 40 + 2)
        assert len(set(stats[0::2])) == 8 * 40 + 2  # an inode number per file
        hexes = [r.split()[1].split("/objects/")[1].replace("/", "") for r in nginx.requests()
                 if "/objects/" in r]
        assert len(hexes) >= 8 * 2 + 1  # the trees were fetched over HTTP
        local = LocalSource(kit.store.root)
        types = {h: stored_type(local, ObjectId(bytes.fromhex(h))) for h in hexes}
        assert all(t == ObjType.TREE for t in types.values()), types
    finally:
        mounter.cleanup()
        nginx.stop()


def test_objects_cache_as_a_symlink_is_refused(kit: Kit, served) -> None:
    """``cache_dir/objects`` planted as a symlink to another private folder of the
    daemon's user: the mount is refused (unsafe cache, one line) and nothing is
    written where the link points."""
    elsewhere = kit.base / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (kit.base / "cache").mkdir(mode=0o700)
    (kit.base / "cache" / "objects").symlink_to(elsewhere)
    mp = kit.base / "m"
    mp.mkdir()
    res = run_cas("mount", "--config", str(kit.config), "app", str(mp))
    assert res.returncode == UnsafeFolder.exit_code, res.stderr
    assert "not a directory" in res.stderr and len(res.stderr.splitlines()) == 1
    assert list(elsewhere.iterdir()) == []
    with open("/proc/self/mounts") as f:
        assert str(mp) not in f.read()
