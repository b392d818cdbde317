"""Revision following and stable inodes on real FUSE mounts, with revisions
published by real ``cas release create`` / ``cas release rollback`` processes.

Every mount is a ``cas mount --foreground`` child of the test (fuse_fixtures.Mounter,
which always unmounts); waits are for conditions with generous deadlines.
"""

from __future__ import annotations

import base64
import json
import mmap
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_julia_mount import EXPECTED_CHECKSUM, published  # noqa: F401 - the fixture

from tests.fuse_fixtures import Mounter, mounted
from tests.helpers import cas
from tests.metrics_helpers import parse, values

pytestmark = [pytest.mark.fuse, pytest.mark.slow]

MTIME = 1_700_000_000
BIG1 = bytes(range(256)) * 8192  # 2 MiB: larger than prefetch_min and than BIG2
BIG2 = b"revision two! " * 100_000  # 1.4 MiB
DEADLINE = 60.0


def _write_tree(d: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, (MTIME, MTIME))
    for sub in sorted((x for x in d.rglob("*") if x.is_dir()), reverse=True):
        os.utime(sub, (MTIME, MTIME))
    return d


class Repo:
    """A store, a key and a client config; publishes trees as new revisions via the CLI."""

    def __init__(self, base: Path, ttl: str) -> None:
        self.base, self.store, self.key = base, base / "store", base / "release.key"
        cas(None, "keygen", str(self.key), check=True)
        self.config = base / "client.toml"
        self.config.write_text(
            f'trusted_keys = ["{self.key}.pub"]\nsource = "{self.store}"\n'
            f'cache_dir = "{base}/cache"\nstate_dir = "{base}/state"\nprefetch_min = "1M"\n'
            f'follow = true\nttl = "{ttl}"\nmetrics_textfile_dir = "{base}/metrics"\n'
            'metrics_interval = 1\n')
        self.n = 0

    def publish(self, files: dict[str, bytes], *extra: str) -> str:
        self.n += 1
        tree = _write_tree(self.base / f"tree{self.n}", files)
        root = cas(self.store, "put", str(tree), check=True).out.strip()
        cas(self.store, "release", "create", "rel", root, "--key", str(self.key), *extra,
            check=True)
        return root

    def revision_doc(self, revision: int) -> Path:
        return self.store / "releases" / "rel" / f"{revision:012d}.release"

    def body(self, revision: int) -> dict:
        return json.loads(base64.b64decode(json.loads(self.revision_doc(revision).read_bytes())
                                           ["body"]))


# same.txt is larger than inline_max (a chunk): its stat identity does not depend
# on the small files packed beside it, which change.
V1 = {"big.bin": BIG1, "same.txt": b"never changes\n" * 1300, "lib/keep.jl": b"x = 1\n",
      "small.txt": b"one\n"}
V2 = {"big.bin": BIG2, "same.txt": b"never changes\n" * 1300, "lib/keep.jl": b"x = 1\n",
      "small.txt": b"two\n", "added.txt": b"new in 2\n"}


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Callable[..., tuple[Repo, Mounter]]]:
    made: list[Mounter] = []

    def make(ttl: str = "1h") -> tuple[Repo, Mounter]:
        repo = Repo(tmp_path, ttl)
        m = Mounter(SimpleNamespace(base=tmp_path, config=repo.config))
        made.append(m)
        return repo, m

    yield make
    for m in made:
        m.cleanup()
    assert not any(mounted(p) for m in made for _, p in m.procs)


def revision(mp: Path) -> int:
    return int(os.getxattr(mp, "user.cas.revision"))


def wait_for(cond: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def status(repo: Repo, mp: Path) -> dict:
    return json.loads(cas(None, "--json", "status", str(mp), "--config", str(repo.config),
                          check=True).out)


def reload(repo: Repo, mp: Path) -> str:
    return cas(None, "reload", str(mp), "--config", str(repo.config), check=True).out


def _publish_during_reads(repo: Repo, mp: Path, trigger: Callable[[], None]) -> None:
    assert revision(mp) == 1
    with open(mp / "big.bin", "rb") as old, open(mp / "small.txt", "rb") as mapped:
        head = old.read(100_000)
        old_map = mmap.mmap(mapped.fileno(), 0, access=mmap.ACCESS_READ)  # like dlopen
        assert old_map[:] == b"one\n"
        repo.publish(V2)
        trigger()
        wait_for(lambda: revision(mp) == 2, "revision 2 on the root")
        # a new open sees revision 2 at once, while the old handle is still open
        assert (mp / "big.bin").read_bytes() == BIG2
        # ... through its own kernel inode: its own size, its own page cache
        assert (mp / "big.bin").stat().st_size == len(BIG2)
        with open(mp / "small.txt", "rb") as f, \
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as new_map:
            assert new_map[:] == b"two\n"
        assert old_map[:] == b"one\n"
        old_map.close()
        assert (mp / "added.txt").read_bytes() == V2["added.txt"]
        assert (mp / "small.txt").read_bytes() == b"two\n"
        parts = [head]
        while chunk := old.read(65_536):  # slowly, interleaved with new opens
            parts.append(chunk)
            if len(parts) % 8 == 0:
                assert (mp / "big.bin").read_bytes()[:64] == BIG2[:64]
        assert b"".join(parts) == BIG1
        assert os.fstat(old.fileno()).st_size == len(BIG1)
    assert (mp / "big.bin").read_bytes() == BIG2
    assert (mp / "big.bin").stat().st_size == len(BIG2)
    assert os.getxattr(mp, "user.cas.revision") == b"2"


def test_publish_during_reads_switch_by_cas_reload(mounts) -> None:
    repo, m = mounts("1h")  # the timer never fires during the test
    repo.publish(V1)
    mp = m.mount("rel")
    out = {}
    _publish_during_reads(repo, mp, lambda: out.update(text=reload(repo, mp)))
    assert "revision 2" in out["text"]
    st = status(repo, mp)
    assert st["following"] and st["revision"] == 2 and st["follow"]["switches"] == 1
    assert st["follow"]["last_ok"] >= st["follow"]["last_switch"] > 0
    # the node_exporter textfile follows the switch too (casstore.client.metrics)
    wait_for(lambda: _gauge(repo, "revision") == 2, "the metrics file to show revision 2")
    assert _gauge(repo, "last_check_success_time_seconds") >= st["follow"]["last_switch"] - 1


def _gauge(repo: Repo, name: str) -> float | None:
    """A ``cas_client_NAME`` value from the mount's .prom file (None: not written yet),
    read with prometheus_client's parser."""
    for prom in (repo.base / "metrics").glob("casstore_*.prom"):
        found = values(parse(prom.read_text()), f"cas_client_{name}")
        if found:
            return found[0][1]
    return None


def test_publish_during_reads_switch_by_ttl_expiry(mounts) -> None:
    repo, m = mounts("1s")
    repo.publish(V1)
    mp = m.mount("rel")
    _publish_during_reads(repo, mp, lambda: None)
    first = status(repo, mp)["follow"]["checks"]
    wait_for(lambda: status(repo, mp)["follow"]["checks"] > first, "the timer to check again")


def test_bad_revisions_are_not_applied_and_status_says_why(mounts) -> None:
    repo, m = mounts("1h")
    repo.publish(V1)
    mp = m.mount("rel")
    repo.publish(V2)
    reload(repo, mp)
    assert revision(mp) == 2
    # revision 3: revision 2's document with its body changed (signature kept)
    outer = json.loads(repo.revision_doc(2).read_bytes())
    body = json.loads(base64.b64decode(outer["body"]))
    body.update(revision=3, root=body["root"])
    outer["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    repo.publish(V1)  # a real revision 3 (the index lists it), then tampered with
    repo.revision_doc(3).write_bytes(json.dumps(outer).encode())
    out = reload(repo, mp)
    assert "rejected revision 3" in out
    assert revision(mp) == 2 and (mp / "small.txt").read_bytes() == b"two\n"
    text = cas(None, "status", str(mp), "--config", str(repo.config), check=True).out
    assert "rejected:   revision 3 (BadSignature)" in text, text
    # an expired revision 4 is refused too (signed to expire 3 s after its creation)
    repo.publish({**V1, "small.txt": b"four\n"}, "--expires-days", "0.00003")
    expires = repo.body(4)["expires"]
    wait_for(lambda: time.time() > expires + 1, "revision 4 to expire")
    reload(repo, mp)
    rej = status(repo, mp)["follow"]["rejected"]
    assert rej["revision"] == 4 and "expire" in rej["reason"].lower(), rej
    assert revision(mp) == 2
    # a good revision 5 is applied, and the rejection is cleared
    repo.publish({**V1, "small.txt": b"five\n"})
    reload(repo, mp)
    assert revision(mp) == 5 and (mp / "small.txt").read_bytes() == b"five\n"
    assert status(repo, mp)["follow"]["rejected"] is None
    log = (repo.base / "mnt.out").read_text()
    assert "rejected rel revision 3" in log and "rejected rel revision 4" in log


def test_pinned_mount_does_not_move_and_a_rollback_is_followed(mounts) -> None:
    repo, m = mounts("1s")
    repo.publish(V1)
    pinned = m.mount("rel@1", name="pinned")
    follower = m.mount("rel", name="follower")
    repo.publish(V2)
    wait_for(lambda: revision(follower) == 2, "the follower on revision 2")
    assert (follower / "small.txt").read_bytes() == b"two\n"
    res = cas(None, "reload", str(pinned), "--config", str(repo.config))
    assert res.code == 56 and "pinned" in res.err, res.err
    cas(repo.store, "release", "rollback", "rel", "--to", "1", "--key", str(repo.key),
        check=True)
    wait_for(lambda: revision(follower) == 3, "the rollback (revision 3)")
    assert (follower / "small.txt").read_bytes() == b"one\n"
    assert not (follower / "added.txt").exists()
    assert revision(pinned) == 1 and (pinned / "small.txt").read_bytes() == b"one\n"
    assert not status(repo, pinned)["following"]


def test_unchanged_paths_keep_their_inode_across_a_switch_and_a_remount(mounts) -> None:
    repo, m = mounts("1h")
    repo.publish(V1)
    mp = m.mount("rel")
    keep = ["same.txt", "lib", "lib/keep.jl"]
    before = {p: (mp / p).stat().st_ino for p in [*keep, "big.bin", "small.txt"]}
    assert len(set(before.values())) == len(before)
    assert mp.stat().st_ino == 1
    repo.publish(V2)
    reload(repo, mp)
    after = {p: (mp / p).stat().st_ino for p in before}
    assert {p: after[p] for p in keep} == {p: before[p] for p in keep}
    assert after["big.bin"] != before["big.bin"] and after["small.txt"] != before["small.txt"]
    m.cleanup()
    m.procs.clear()
    mp = m.mount("rel")  # a remount, now on revision 2
    assert {p: (mp / p).stat().st_ino for p in before} == after


# -- real Julia across a switch ------------------------------------------------------
WRAPPER = """
write(ARGS[1], "ready")   # started from revision N: julia, libjulia, sysimage mapped
while !isfile(ARGS[2]); sleep(0.05); end   # the test switches the mount meanwhile
empty!(ARGS); push!(ARGS, ENV["CAS_TEST_EVENTS"], "--report")
include(joinpath(ENV["CAS_TEST_DEPOT"], "jobs", "jetjob.jl"))
"""


@pytest.mark.julia
def test_julia_running_from_the_mount_across_a_switch(published: dict,  # noqa: F811
                                                       tmp_path: Path) -> None:
    """Julia starts on revision 2 of the example depot; revision 3 (libjulia changed,
    a file added) is applied while it runs; it finishes with the right checksum,
    and a Julia started afterwards sees revision 3."""
    base, store = published["base"], published["store"]
    cfg = tmp_path / "client.toml"
    cfg.write_text(f'trusted_keys = ["{base}/release.key.pub"]\nsource = "{store}"\n'
                   f'cache_dir = "{tmp_path}/cache"\nstate_dir = "{tmp_path}/state"\n'
                   'follow = true\nttl = "1h"\n')
    repo = SimpleNamespace(config=cfg)
    m = Mounter(SimpleNamespace(base=tmp_path, config=cfg))
    try:
        mp = m.mount("demo")
        start = revision(mp)
        julia = str(mp / "julia" / "bin" / "julia")
        (tmp_path / "scratch").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("JULIA_")}
        env.update(JULIA_DEPOT_PATH=f"{tmp_path}/scratch:{mp}", CAS_TEST_DEPOT=str(mp),
                   CAS_TEST_EVENTS=str(tmp_path / "events.txt"))
        gen = subprocess.run([julia, "--startup-file=no", str(mp / "jobs/gen_events.jl"),
                              str(tmp_path / "events.txt"), "300"], env=env,
                             capture_output=True, text=True, timeout=600)
        assert gen.returncode == 0, gen.stderr
        (tmp_path / "wrapper.jl").write_text(WRAPPER)
        ready, go = tmp_path / "ready", tmp_path / "go"
        job = subprocess.Popen([julia, "--startup-file=no", str(tmp_path / "wrapper.jl"),
                                str(ready), str(go)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        try:
            wait_for(ready.exists, "the Julia job to start", 600)
            # revision start+1: the same trees with libjulia changed and a file added
            staged = base / "build" / "root"
            lib = staged / "julia" / "lib" / "x86_64-linux-gnu" / "libjulia.so.1.5"
            with open(lib, "ab") as f:
                f.write(b"\0" * 4096)  # trailing bytes: still a loadable library
            (staged / "jobs" / "follow-extra.txt").write_text("revision three\n")
            body = json.loads(base64.b64decode(json.loads(
                (store / "releases" / "demo" / f"{start:012d}.release").read_bytes())["body"]))
            root = cas(store, "put", str(staged), check=True).out.strip()
            variants = [a for lv, t in body["variants"].items() for a in ("--variant",
                                                                           f"{lv}={t}")]
            cas(store, "release", "create", "demo", root, "--key", str(base / "release.key"),
                *variants, "--baseline", body["baseline"], check=True)
            reload(repo, mp)
            assert revision(mp) == start + 1
            assert (mp / "jobs" / "follow-extra.txt").read_text() == "revision three\n"
            go.write_text("go")
            out, err = job.communicate(timeout=600)
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
        assert job.returncode == 0, err[-3000:]
        assert f"CHECKSUM {EXPECTED_CHECKSUM}" in out, out
        after = subprocess.run([julia, "--startup-file=no", "-e", 'using CasEvents; print('
                                'read(joinpath(ENV["CAS_TEST_DEPOT"], "jobs", '
                                '"follow-extra.txt"), String))'], env=env,
                               capture_output=True, text=True, timeout=600)
        assert after.returncode == 0 and after.stdout == "revision three\n", after.stderr
        assert status(repo, mp)["follow"]["switches"] == 1
        # the running Julia had libjulia mapped: it was detached, not overwritten
        assert "detached /julia/lib/x86_64-linux-gnu/libjulia.so.1.5" in m.output()
    finally:
        m.cleanup()
    assert not mounted(tmp_path / "mnt")


def test_a_new_revision_with_a_corrupt_root_is_not_applied(mounts) -> None:
    """A validly signed revision 2 whose root tree object is corrupt at the source: the
    check fails (status says why), revision 1 stays served with every path readable;
    once the source is repaired the next check switches."""
    repo, m = mounts("1h")
    repo.publish(V1)
    mp = m.mount("rel")
    root2 = repo.publish(V2)
    obj = repo.store / "objects" / root2[3:5] / root2[5:]
    good = obj.read_bytes()
    obj.chmod(0o644)
    obj.write_bytes(good[:-8] + bytes(8))  # same size, wrong bytes
    out = reload(repo, mp)
    assert "check failed" in out and "revision 2" in out, out
    assert revision(mp) == 1
    assert (mp / "small.txt").read_bytes() == b"one\n"
    assert (mp / "same.txt").read_bytes() == V1["same.txt"]
    assert (mp / "big.bin").read_bytes() == BIG1
    st = status(repo, mp)
    assert st["revision"] == 1 and "cannot be read" in (st["follow"]["error"] or ""), st
    obj.write_bytes(good)  # the source is repaired
    reload(repo, mp)
    assert revision(mp) == 2
    assert (mp / "small.txt").read_bytes() == b"two\n"
    assert (mp / "added.txt").read_bytes() == b"new in 2\n"
    assert status(repo, mp)["follow"]["error"] is None


def test_reopen_through_proc_fd_after_a_detach(mounts) -> None:
    """An open file whose content a switch replaces is detached (its inode renamed);
    reopening it through ``/proc/self/fd/N`` gives its own (old) bytes, not ENOENT."""
    repo, m = mounts("1h")
    repo.publish(V1)
    mp = m.mount("rel")
    fd = os.open(mp / "small.txt", os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 0) == b"one\n"
        repo.publish(V2)
        reload(repo, mp)
        assert revision(mp) == 2 and (mp / "small.txt").read_bytes() == b"two\n"
        assert ".cas-detached-" in os.readlink(f"/proc/self/fd/{fd}")
        again = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
        try:
            assert os.pread(again, 100, 0) == b"one\n"
        finally:
            os.close(again)
    finally:
        os.close(fd)
