"""``cas mirror``: a verified, incremental, resumable export into a plain folder that
readers (``cas get``, a FUSE mount) use as is, also from a read-only bind mount."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from casstore.distribute.mirror import CATALOG_MARKER, DELAY_ENV, TMP_DIR, Mirror, check_mirror
from casstore.errors import IsAMirror, MirrorBusy, MirrorError, MirrorIncomplete
from casstore.format.objects import HEADER, ObjectId, ObjType, decode
from casstore.releases.release import Release, keygen, load_secret, parse_public, sign
from casstore.sources import LocalSource
from casstore.store.snapshot import put_paths
from casstore.store.writable import Store

from helpers import cas, make_tree, snapshot

ROOT = Path(__file__).resolve().parent.parent


class Pub:
    """A store, a signing key, and a helper to put a folder and publish it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.store = Store.open(base / "store", create=True)
        self.key = base / "release.key"
        keygen(self.key)

    def publish(self, name: str, folder: Path, revision: int, key: Path | None = None) -> ObjectId:
        root = put_paths(self.store, [folder])
        now = int(time.time())
        rel = Release(name, revision, str(root), now - 10, now + 3600, {}, None)
        self.store.write_release(name, revision, sign(rel, load_secret(key or self.key)))
        return root


@pytest.fixture
def pub(tmp_path: Path):
    p = Pub(tmp_path)
    yield p
    p.store.close()


def object_files(root: Path) -> dict[str, bytes]:
    """Every object file under ``root/objects`` (markers left out), by relative path."""
    out = {}
    for p in (root / "objects").glob("*/*"):
        if p.name != CATALOG_MARKER:
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def tree(base: Path, seed: int, big: int = 3 << 20) -> Path:
    folder = base / f"tree{seed}"
    folder.mkdir()
    make_tree(folder, seed=seed, big=big)
    return folder


def mirror_json(src: Path, dest: Path, *extra: str, env: dict | None = None):
    res = cas(None, "--json", "mirror", str(src), str(dest), *extra, env=env)
    return res, (json.loads(res.out) if res.out.strip() else None)


# -- the basic promise ----------------------------------------------------------------
@pytest.mark.slow
def test_full_mirror_reads_back_byte_identical(pub: Pub, tmp_path: Path) -> None:
    pub.publish("app", tree(tmp_path, 1), 1)
    dest = tmp_path / "mirror"
    res, rep = mirror_json(pub.store.root, dest)
    assert res.code == 0, res.err
    src_objects = object_files(pub.store.root)
    assert object_files(dest) == src_objects  # the same files, byte for byte
    assert rep["objects_copied"] == len(src_objects) and rep["objects_skipped"] == 0
    assert rep["bytes_copied"] == sum(len(b) for b in src_objects.values())
    assert rep["releases_copied"] == 1
    # a plain folder: no database, no lock, no temporary files
    assert sorted(p.name for p in dest.iterdir()) == ["casstore.json", "objects", "releases"]
    for f in ("releases/_index.json", "releases/app/_index.json",
              "releases/app/000000000001.release", "casstore.json"):
        assert (dest / f).read_bytes() == (pub.store.root / f).read_bytes(), f
    # the copy reads back exactly as the source does
    a, b = tmp_path / "from-store", tmp_path / "from-mirror"
    cas(pub.store.root, "get", "app", str(a), check=True)
    cas(dest, "get", "app", str(b), check=True)
    assert snapshot(a) == snapshot(b) and snapshot(b)
    ok = cas(None, "mirror", "--check", str(dest))
    assert ok.code == 0 and "1 releases" in ok.out and "OK" in ok.out, ok.out + ok.err


@pytest.mark.slow
def test_incremental_copies_only_new_objects(pub: Pub, tmp_path: Path) -> None:
    t1 = tree(tmp_path, 1)
    pub.publish("app", t1, 1)
    dest = tmp_path / "mirror"
    assert mirror_json(pub.store.root, dest)[0].code == 0
    before = set(object_files(pub.store.root))
    (t1 / "src" / "new.jl").write_bytes(os.urandom(40_000))
    (t1 / "mid.bin").write_bytes(os.urandom(300_000))
    pub.publish("app", t1, 2)
    pub.publish("tools", tree(tmp_path, 2, big=1 << 20), 1)
    new = set(object_files(pub.store.root)) - before
    assert len(new) >= 4  # new chunks and the changed trees
    res, rep = mirror_json(pub.store.root, dest)
    assert res.code == 0, res.err
    assert rep["objects_copied"] == len(new)
    assert rep["releases_copied"] == 2 and rep["releases_skipped"] == 1
    assert object_files(dest) == object_files(pub.store.root)
    assert json.loads((dest / "releases/_index.json").read_bytes())["names"] == ["app", "tools"]
    assert json.loads((dest / "releases/app/_index.json").read_bytes())["revisions"] == [1, 2]
    # nothing new: nothing copied, nothing rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}
    res, rep = mirror_json(pub.store.root, dest)
    assert res.code == 0 and rep["objects_copied"] == 0 and rep["releases_copied"] == 0
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == mtimes


def test_release_option_mirrors_only_that_name(pub: Pub, tmp_path: Path) -> None:
    pub.publish("app", tree(tmp_path, 1, big=1 << 20), 1)
    pub.publish("tools", tree(tmp_path, 2, big=1 << 20), 1)
    dest = tmp_path / "mirror"
    res, rep = mirror_json(pub.store.root, dest, "--release", "tools")
    assert res.code == 0, res.err
    assert LocalSource(dest).release_names() == ["tools"]
    assert not (dest / "releases" / "app").exists()


# -- bad input in the source ------------------------------------------------------------
def _a_chunk(store: Path, exclude: set[str] = frozenset()) -> tuple[str, ObjectId]:
    """The biggest chunk object file of the store (relative path and id)."""
    best = None
    for rel, data in object_files(store).items():
        if rel in exclude or HEADER.unpack_from(data)[1] != ObjType.CHUNK:
            continue
        if best is None or len(data) > best[1]:
            best = (rel, len(data))
    assert best is not None
    rel = best[0]
    return rel, ObjectId.parse("b3-" + rel.split("/")[1] + rel.split("/")[2])


def test_corrupt_source_object_is_not_copied(pub: Pub, tmp_path: Path) -> None:
    pub.publish("app", tree(tmp_path, 1), 1)
    app_objects = set(object_files(pub.store.root))
    pub.publish("tools", tree(tmp_path, 2, big=1 << 20), 1)
    rel, oid = _a_chunk(pub.store.root)
    assert rel in app_objects  # a chunk of "app" only (random data: not shared)
    path = pub.store.root / rel
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    dest = tmp_path / "mirror"
    res, rep = mirror_json(pub.store.root, dest)
    assert res.code == MirrorIncomplete.exit_code, res
    assert str(oid) in res.err and "Traceback" not in res.err
    assert "app@1" in res.err  # the release it holds back is named
    assert not (dest / rel).exists()  # never under its final name
    assert not (dest / TMP_DIR).exists()
    assert rep["problems"] and str(oid) in rep["problems"][0]
    # the release that needs it is not published; the other one is, complete
    assert not (dest / "releases/app").exists()
    assert LocalSource(dest).release_names() == ["tools"]
    assert check_mirror(dest).problems == []
    for rel_path, stored in object_files(dest).items():  # only good objects were copied
        decode(ObjectId.parse("b3-" + rel_path[8:10] + rel_path[11:]), stored)


@pytest.mark.slow
def test_unparsable_or_untrusted_document_is_refused(pub: Pub, tmp_path: Path) -> None:
    folder = tree(tmp_path, 1, big=1 << 20)
    pub.publish("app", folder, 1)
    pub.store.write_release("app", 2, b'{"format": "casstore-release", "version": 1, "body": "!"}')
    other = tmp_path / "other.key"
    keygen(other)
    pub.publish("evil", folder, 1, key=other)
    dest = tmp_path / "mirror"
    res, rep = mirror_json(pub.store.root, dest)
    assert res.code == MirrorIncomplete.exit_code
    assert "app@2" in res.err and "base64" in res.err
    assert not (dest / "releases/app/000000000002.release").exists()
    assert (dest / "releases/app/000000000001.release").exists()
    assert (dest / "releases/evil/000000000001.release").exists()  # parses: nodes decide
    # with --trusted-key, only documents signed by that key are copied
    dest2 = tmp_path / "mirror2"
    key_hex = parse_public(str(pub.key) + ".pub")
    res, rep = mirror_json(pub.store.root, dest2, "--trusted-key", key_hex)
    assert res.code == MirrorIncomplete.exit_code
    assert "evil@1" in rep["releases_held_back"] and "untrusted" in " ".join(rep["problems"])
    assert not (dest2 / "releases/evil").exists()
    assert (dest2 / "releases/app/000000000001.release").exists()


# -- order, resume, markers ------------------------------------------------------------------
@pytest.mark.slow
def test_releases_and_index_are_written_last(pub: Pub, tmp_path: Path) -> None:
    pub.publish("app", tree(tmp_path, 1), 1)
    pub.publish("tools", tree(tmp_path, 2, big=1 << 20), 1)
    dest = tmp_path / "mirror"
    writes: list[str] = []
    seen_at_first_release: list[list[str]] = []

    def on_write(rel: str) -> None:
        if rel.startswith("releases/") and not any(w.startswith("releases/") for w in writes):
            # a reader looking at DEST right now: every release it can find is complete
            rep = check_mirror(dest)
            seen_at_first_release.append(rep.problems + [f"releases={rep.releases}"])
        writes.append(rel)

    Mirror(LocalSource(pub.store.root), dest, on_write=on_write, jobs=4).run()
    assert seen_at_first_release == [["releases=1"]]
    kinds = ["o" if w.startswith("objects/") else "d" if w.endswith(".release")
             else "n" if w == "releases/_index.json" else "r" if w.endswith("_index.json")
             else "f" for w in writes]
    order = "".join(kinds)
    assert order.rstrip("n").rstrip("r").rstrip("d").lstrip("f").strip("o") == "", order
    assert order.endswith("ddrrn"), order
    # a tree is written only after all of its children
    pos = {w: i for i, w in enumerate(writes)}
    src = LocalSource(pub.store.root)
    from casstore.format.trees import children
    for w in writes:
        if w.startswith("objects/") and not w.endswith(CATALOG_MARKER):
            oid = ObjectId.parse("b3-" + w[8:10] + w[11:])
            kind, raw = decode(oid, src.read_stored(oid))
            for child in children(kind, raw):
                rel = f"objects/{child.oid.hex[:2]}/{child.oid.hex[2:]}"
                assert pos[rel] < pos[w], (rel, w)


@pytest.mark.slow
def test_resume_after_sigkill(pub: Pub, tmp_path: Path) -> None:
    pub.publish("app", tree(tmp_path, 1, big=6 << 20), 1)
    total = len(object_files(pub.store.root))
    assert total >= 8
    dest = tmp_path / "mirror"
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{DELAY_ENV: "0.3"})
    proc = subprocess.Popen([sys.executable, "-m", "casstore", "mirror", "--jobs", "1",
                             str(pub.store.root), str(dest)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(object_files(dest)) < 2 if (dest / "objects").is_dir() else True:
            assert proc.poll() is None, "mirror ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    copied = object_files(dest)
    assert 2 <= len(copied) < total
    for rel, stored in copied.items():  # whatever has a final name is whole and verified
        decode(ObjectId.parse("b3-" + rel[8:10] + rel[11:]), stored)
    assert not list((dest / "releases").rglob("*"))  # no release, no index yet
    assert (dest / TMP_DIR).is_dir()  # what the killed run left; the next run removes it
    res, rep = mirror_json(pub.store.root, dest)
    assert res.code == 0, res.err
    assert rep["objects_copied"] + len(copied) >= total and rep["objects_copied"] < total
    assert not (dest / TMP_DIR).exists()
    assert object_files(dest) == object_files(pub.store.root)
    assert check_mirror(dest).problems == []


@pytest.mark.slow
def test_cvmfs_markers_and_fsck_on_a_mirror(pub: Pub, tmp_path: Path) -> None:
    pub.publish("app", tree(tmp_path, 1, big=1 << 20), 1)
    dest = tmp_path / "mirror"
    assert mirror_json(pub.store.root, dest)[0].code == 0
    folders = [p for p in (dest / "objects").iterdir()]
    assert folders and all((p / CATALOG_MARKER).read_bytes() == b"" for p in folders)
    assert check_mirror(dest).problems == []  # markers do not confuse the checker
    fsck = cas(dest, "fsck")
    assert fsck.code == IsAMirror.exit_code and "mirror --check" in fsck.err, fsck
    assert not (dest / "index").exists() and not (dest / "lock").exists()
    bare = tmp_path / "bare"
    assert mirror_json(pub.store.root, bare, "--no-cvmfs-catalogs")[0].code == 0
    assert not list(bare.rglob(CATALOG_MARKER))


@pytest.mark.slow
def test_check_finds_damage(pub: Pub, tmp_path: Path) -> None:
    pub.publish("app", tree(tmp_path, 1, big=1 << 20), 1)
    dest = tmp_path / "mirror"
    assert mirror_json(pub.store.root, dest)[0].code == 0
    rel, oid = _a_chunk(dest)
    (dest / rel).unlink()
    rel2, oid2 = _a_chunk(dest, exclude={rel})
    data = bytearray((dest / rel2).read_bytes())
    data[-1] ^= 0xFF
    (dest / rel2).write_bytes(bytes(data))
    res = cas(None, "mirror", "--check", str(dest))
    assert res.code == 1 and str(oid) in res.out and str(oid2) in res.out, res
    # a plain run trusts what is there (the release document is identical): no repair
    res, rep = mirror_json(pub.store.root, dest)
    assert res.code == 0 and rep["objects_copied"] == 0
    # --repair verifies everything and copies the two objects again
    res, rep = mirror_json(pub.store.root, dest, "--repair")
    assert res.code == 0, res.err
    assert rep["objects_copied"] == 2 and rep["releases_copied"] == 0
    assert object_files(dest) == object_files(pub.store.root)
    assert cas(None, "mirror", "--check", str(dest)).code == 0


@pytest.mark.slow
def test_refuses_a_store_and_a_busy_destination(pub: Pub, tmp_path: Path) -> None:
    other = Store.open(tmp_path / "other", create=True)
    other.close()
    res = cas(None, "mirror", str(pub.store.root), str(tmp_path / "other"))
    assert res.code == IsAMirror.exit_code and "writable store" in res.err
    res = cas(None, "mirror", str(pub.store.root), str(tmp_path))  # not empty, no objects/
    assert res.code == MirrorError.exit_code and "neither empty nor a mirror" in res.err
    assert not (tmp_path / "objects").exists()
    dest = tmp_path / "mirror"
    dest.mkdir()
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        res = cas(None, "mirror", str(pub.store.root), str(dest))
        assert res.code == MirrorBusy.exit_code and "another cas mirror" in res.err
    finally:
        os.close(fd)


# -- reading from a read-only folder ------------------------------------------------------
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("fusermount3"),
    reason="a read-only bind mount needs root and unshare(1); the mount needs fusermount3")


@pytest.mark.slow
@needs_root
def test_read_only_bind_mount_get_and_fuse(pub: Pub, tmp_path: Path) -> None:
    """CVMFS is not packaged here: a read-only bind mount of the mirror stands in for
    /cvmfs.  All mounts live in a private mount namespace that dies with the script."""
    folder = tree(tmp_path, 1, big=2 << 20)
    pub.publish("app", folder, 1)
    dest = tmp_path / "mirror"
    assert mirror_json(pub.store.root, dest)[0].code == 0
    ro, mp = tmp_path / "ro", tmp_path / "depot"
    ro.mkdir()
    config = tmp_path / "client.toml"
    config.write_text(f'trusted_keys = ["{pub.key}.pub"]\nsource = "{ro}"\n'
                      f'cache_dir = "{tmp_path / "cache"}"\nstate_dir = "{tmp_path / "state"}"\n')
    out = tmp_path / "out"
    cas_cmd = f"{sys.executable} -m casstore"
    script = f"""
set -e
mount --bind {dest} {ro}
mount -o remount,ro,bind {ro}
if touch {ro}/probe 2>/dev/null; then echo WRITABLE; fi
CAS_CONFIG={config} {cas_cmd} --store {ro} get app {out}/got
CAS_CONFIG={config} {cas_cmd} --store {ro} cat app/src/a.jl > {out}/a.cat
{cas_cmd} exec --config {config} --mountpoint {mp} app -- \
    sh -c 'cat {mp}/big.bin > {out}/big.fuse; ls {mp} > {out}/ls.fuse'
echo DONE
"""
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("CAS_DEBUG", None)
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, env=env, timeout=180)
    assert p.returncode == 0 and "DONE" in p.stdout, p.stdout + p.stderr
    assert "WRITABLE" not in p.stdout
    assert snapshot(out / "got") == snapshot(folder)
    assert (out / "a.cat").read_bytes() == (folder / "src/a.jl").read_bytes()
    assert (out / "big.fuse").read_bytes() == (folder / "big.bin").read_bytes()
    assert sorted((out / "ls.fuse").read_text().split()) == sorted(os.listdir(folder))
    assert not (dest / "probe").exists() and not (dest / "index").exists()
    with open("/proc/self/mounts") as f:  # nothing leaked into our namespace
        assert not [ln for ln in f if str(tmp_path) in ln]


@pytest.mark.parametrize("where", ["objects", "objects/XX", "releases", "releases/app"])
def test_links_planted_in_the_destination_are_never_followed(pub: Pub, tmp_path: Path,
                                                             where: str) -> None:
    """Like the client caches: a symlink planted at a folder of the destination is
    refused with one line, and nothing is written through it."""
    root = pub.publish("app", tree(tmp_path, 1, big=1 << 20), 1)
    dest, outside = tmp_path / "mirror", tmp_path / "outside"
    outside.mkdir()
    where = where.replace("XX", root.hex[:2])
    (dest / where).parent.mkdir(parents=True, exist_ok=True)
    if where != "objects":  # an earlier mirror, then
        (dest / "objects").mkdir(exist_ok=True)
    os.symlink(outside, dest / where)
    res, _rep = mirror_json(pub.store.root, dest)
    assert res.code != 0 and "Traceback" not in res.err, res
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "symlink" in lines[0] and where in lines[0], res.err
    assert list(outside.iterdir()) == []
    # once the link is gone the same command completes
    os.unlink(dest / where)
    res, rep = mirror_json(pub.store.root, dest)
    assert res.code == 0 and rep["releases_copied"] == 1, res
    assert check_mirror(dest).problems == []


def test_links_at_file_names_are_replaced_not_written_through(pub: Pub,
                                                              tmp_path: Path) -> None:
    root = pub.publish("app", tree(tmp_path, 1, big=1 << 20), 1)
    dest, outside = tmp_path / "mirror", tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(b"not the mirror's")
    obj = dest / "objects" / root.hex[:2] / root.hex[2:]
    obj.parent.mkdir(parents=True)
    os.symlink(victim, obj)
    os.symlink(outside, dest / TMP_DIR)
    (dest / "releases").mkdir()
    os.symlink(victim, dest / "releases" / "_index.json")
    res, rep = mirror_json(pub.store.root, dest)
    assert res.code == 0 and rep["releases_copied"] == 1, res
    assert victim.read_bytes() == b"not the mirror's" and sorted(os.listdir(outside)) == ["victim"]
    assert not obj.is_symlink() and obj.is_file()
    assert not (dest / "releases" / "_index.json").is_symlink()
    assert check_mirror(dest).problems == []
