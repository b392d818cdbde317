"""Random corruption of a real store: never wrong bytes, never a hang, fsck sees it all.

At least 200 random single-byte or range corruptions of
objects (chunks, packs, blobs, trees) and release documents in a store built by a
real ``cas put`` and ``cas release create``.  After each one:

* get (in-process restore by id, and by release name after signature
  verification) either fails with a CasError or writes exactly the original tree;
* fsck flags the damaged object or release file (unless the mutation left the
  object's decoded type and bytes intact, e.g. a zstd frame byte that does not
  change the output: then it is not damage, and get must still succeed);
* nothing hangs (each case runs under a deadline).

Every 20th case also runs the real ``cas get`` and ``cas fsck`` processes, and
every 10th case reads the whole release through a real FUSE mount (``cas exec``
with a fresh client cache): every byte that a read returns must be the original
byte, an unreadable file must fail with an error (EIO), never with other bytes.
"""

from __future__ import annotations

import errno
import json
import random
import shutil
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from casstore.errors import CasError
from casstore.format.layout import release_path
from casstore.format.objects import HEADER, ObjectId, decode
from casstore.releases.release import parse_public, unverified, verify
from casstore.sources.local import LocalSource
from casstore.store.fsck import fsck
from casstore.store.restore import restore
from casstore.store.writable import Store

from helpers import cas, make_tree, snapshot

CASES = 240
CLI_EVERY = 20
FUSE_EVERY = 10
DEADLINE = 30.0  # seconds per case; a hang fails the test instead of stalling the suite


@dataclass
class World:
    store: Path
    root: ObjectId
    pub: str
    expected: dict
    work: Path
    targets: list[tuple[str, Path, ObjectId | None]] = field(default_factory=list)


@dataclass
class Case:
    n: int
    world: World
    label: str
    path: Path
    oid: ObjectId | None  # None: a release document
    benign: bool
    out: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    tmp = tmp_path_factory.mktemp("mutations")
    src = tmp / "src"
    src.mkdir()
    make_tree(src, big=3 << 20)
    store, key = tmp / "store", tmp / "key"
    root = cas(store, "put", str(src), check=True).out.strip()
    cas(None, "keygen", str(key), check=True)
    cas(store, "release", "create", "rel", root, "--key", str(key), check=True)
    w = World(store, ObjectId.parse(root), parse_public(Path(f"{key}.pub").read_text()),
              snapshot(src), tmp / "work")
    w.work.mkdir()
    for sub in sorted((store / "objects").iterdir()):
        for f in sorted(sub.iterdir()):
            oid = ObjectId.parse("b3-" + sub.name + f.name)
            w.targets.append((f"object {oid}", f, oid))
    w.targets.append(("release rel@1", release_path(store, "rel", 1), None))
    return w


# -- mutations -------------------------------------------------------------------------
def mutate(data: bytes, rnd: random.Random) -> tuple[str, bytes]:
    """One random corruption; always returns different bytes."""
    b = bytearray(data)
    kind = rnd.choice(["flip", "flip", "header", "range", "zero", "truncate", "append"])
    if kind == "header" and len(b) >= HEADER.size:
        i = rnd.randrange(HEADER.size)
        b[i] ^= rnd.randrange(1, 256)
    elif kind in ("flip", "header"):
        i = rnd.randrange(len(b))
        b[i] ^= rnd.randrange(1, 256)
    elif kind == "range":
        i = rnd.randrange(len(b))
        n = rnd.randint(1, 64)
        b[i:i + n] = rnd.randbytes(len(b[i:i + n]))
    elif kind == "zero":
        i, n = rnd.randrange(len(b)), rnd.randint(1, 256)
        b[i:i + n] = bytes(len(b[i:i + n]))
    elif kind == "truncate":
        del b[rnd.randrange(len(b)):]
    else:
        b += rnd.randbytes(rnd.randint(1, 64))
    if bytes(b) == data:  # a random range can equal what it replaced: force a change
        b[0] ^= 0xFF
    return kind, bytes(b)


def is_benign(oid: ObjectId | None, before: bytes, after: bytes, pub: str) -> bool:
    """The mutation left the content intact (so it is not damage fsck must report)."""
    try:
        if oid is None:
            verify(after, [pub], now=0)
            return unverified(after) == unverified(before)
        return (decode(oid, after) == decode(oid, before)
                and HEADER.unpack_from(after)[3] == 0)
    except CasError:
        return False


# -- checks (append a FUSE-read leg here) ---------------------------------------------
def check_restore(c: Case) -> None:
    """get by id and by release name: a clean error or exactly the original tree."""
    w = c.world
    for how in ("id", "release"):
        dest = c.out / how
        try:
            root = w.root
            if how == "release":
                doc = LocalSource(w.store).read_release("rel", 1)
                root = verify(doc, [w.pub]).root_id
            restore(LocalSource(w.store), root, dest)
        except CasError:
            continue
        assert snapshot(dest) == w.expected, f"case {c.n} ({c.label}): WRONG BYTES via {how}"
    if c.benign:
        assert snapshot(c.out / "id") == w.expected, f"case {c.n}: benign change broke get"


def check_fsck(c: Case) -> None:
    s = Store.open(c.world.store)
    try:
        rep = fsck(s)
    finally:
        s.close()
    if c.benign:
        assert not rep.problems, (c.n, c.label, rep.problems)
        return
    name = str(c.oid) if c.oid is not None else "releases/rel/000000000001.release"
    assert any(name in p for p in rep.problems), (c.n, c.label, rep.problems)


def check_cli(c: Case) -> None:
    """The real processes, for a sample: same promises, plus exit codes and one line."""
    w = c.world
    got = cas(w.store, "get", str(w.root), str(c.out / "cli"), timeout=60)
    if got.code == 0:
        assert snapshot(c.out / "cli") == w.expected, f"case {c.n}: WRONG BYTES from cas get"
    else:
        assert "Traceback" not in got.err and len(got.err.strip().splitlines()) == 1, got
        assert got.err.startswith("cas: error:"), got
    res = cas(w.store, "fsck", timeout=60)
    assert res.code == (0 if c.benign else 1), (c.n, c.label, res)


# Run inside the private mount namespace of `cas exec`: walk the mount, record what
# each path gives (its metadata and bytes, or the errno of the failed read).
_FUSE_READER = r"""
import json, os, stat, sys
mp, out = sys.argv[1], sys.argv[2]
seen = {}
for top, dirs, files in os.walk(mp):
    for name in sorted(dirs + files):
        p = os.path.join(top, name)
        rel = os.path.relpath(p, mp)
        try:
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                seen[rel] = ["l", os.readlink(p), st.st_mtime_ns]
            elif stat.S_ISDIR(st.st_mode):
                seen[rel] = ["d", stat.S_IMODE(st.st_mode), st.st_mtime_ns]
            else:
                with open(p, "rb") as f:
                    data = f.read()
                seen[rel] = ["f", stat.S_IMODE(st.st_mode), st.st_mtime_ns, data.hex()]
        except OSError as exc:
            seen[rel] = ["error", exc.errno]
with open(out, "w") as f:
    json.dump(seen, f)
"""


FUSE_SEEN = {"refused": 0, "eio": 0, "clean": 0}


def check_fuse(c: Case) -> None:
    """Read everything through a real mount: original bytes or an error, never others."""
    w = c.world
    cfg = c.out / "client.toml"
    cfg.write_text(f'trusted_keys = ["{w.pub}"]\nsource = "{w.store}"\n'
                   'cache_dir = "cache"\nstate_dir = "state"\nprefetch_min = "1M"\n')
    mp, report = c.out / "mnt", c.out / "fuse.json"
    mp.mkdir()
    res = cas(None, "exec", "rel", "--config", str(cfg), "--mountpoint", str(mp), "--",
              sys.executable, "-c", _FUSE_READER, str(mp), str(report), timeout=DEADLINE)
    if res.code != 0:  # the release or its root cannot be used: a clean refusal
        assert "Traceback" not in res.err and res.err.startswith("cas: error:"), res
        assert not c.benign, f"case {c.n} ({c.label}): benign change broke the mount: {res}"
        FUSE_SEEN["refused"] += 1
        return
    seen = json.loads(report.read_text())
    errors = 0
    for rel, got in seen.items():
        if got[0] == "error":
            errors += 1
            assert got[1] == errno.EIO, f"case {c.n} ({c.label}): {rel} gave errno {got[1]}"
            continue
        assert rel in w.expected, f"case {c.n} ({c.label}): FUSE shows a path {rel!r} not stored"
        want = list(w.expected[rel])
        if want[0] == "f":
            want[3] = want[3].hex()
        assert got == want, f"case {c.n} ({c.label}): WRONG BYTES or metadata via FUSE: {rel}"
    if c.benign:
        assert errors == 0 and set(seen) == set(w.expected), (c.n, c.label)
    FUSE_SEEN["eio" if errors else "clean"] += 1


CHECKS: list[Callable[[Case], None]] = [check_restore, check_fsck]


def _run_with_deadline(fn: Callable[[Case], None], case: Case) -> None:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            fn(case)
        except BaseException as exc:  # re-raised in the test thread below
            errors.append(exc)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(DEADLINE)
    assert not t.is_alive(), f"case {case.n} ({case.label}): {fn.__name__} hung"
    if errors:
        raise errors[0]


@pytest.mark.slow
def test_random_mutations(world: World) -> None:
    rnd = random.Random(8)
    kinds: dict[str, int] = {}
    benign = 0
    for n in range(CASES):
        label, path, oid = rnd.choice(world.targets)
        original = path.read_bytes()
        kind, bad = mutate(original, rnd)
        kinds[kind] = kinds.get(kind, 0) + 1
        out = world.work / f"c{n}"
        out.mkdir()
        case = Case(n, world, f"{label}, {kind}", path, oid,
                    is_benign(oid, original, bad, world.pub), out)
        benign += case.benign
        path.write_bytes(bad)
        try:
            checks = (CHECKS + ([check_cli] if n % CLI_EVERY == 0 else [])
                      + ([check_fuse] if n % FUSE_EVERY == 0 else []))
            for check in checks:
                _run_with_deadline(check, case)
        finally:
            path.write_bytes(original)
            shutil.rmtree(out)
    print(f"{CASES} cases, {benign} benign, kinds {kinds}, FUSE {FUSE_SEEN}")
    # The FUSE leg really mounted and really met damage (EIO) on some cases.
    assert sum(FUSE_SEEN.values()) == CASES // FUSE_EVERY and FUSE_SEEN["eio"] > 0, FUSE_SEEN
    assert benign < CASES // 4, benign  # the harness must mostly test real damage
    assert len(kinds) == 6, kinds
    assert {t[0].split()[0] for t in world.targets} == {"object", "release"}
