"""Revision following and stable inodes, without FUSE: the config keys, the
Follower (check / verify / switch / reject), the open-file page-cache model of
ReleaseFS and the inode numbers of the VFS, over a real store and real signed
releases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from casstore.client.config import from_dict, load, parse_duration
from casstore.client.follow import (
    FOLLOW_NEGATIVE_S,
    FOLLOW_TIMEOUT_S,
    PINNED_TIMEOUT_S,
    Follower,
    follow_policy,
)
from casstore.client.fuse.wiring import build_fs, build_vfs, switch_fs
from casstore.client.selection import select
from casstore.errors import UsageError
from casstore.view.vfs import ROOT_INO, VFS, stable_inode
from tests.fuse_fixtures import Kit


# -- config --------------------------------------------------------------------
@pytest.mark.parametrize("text,seconds", [("30s", 30), ("4m", 240), ("1h", 3600),
                                          ("500ms", 0.5), ("2", 2), (90, 90), ("1.5m", 90)])
def test_durations_parse(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_follow_defaults_off_with_a_four_minute_ttl() -> None:
    cfg = from_dict({})
    assert (cfg.follow, cfg.ttl) == (False, 240.0)
    cfg = from_dict({"follow": True, "ttl": "30s"})
    assert (cfg.follow, cfg.ttl) == (True, 30.0)


# -- the follow policy: decided once, for the CLI and the daemon ----------------
@pytest.mark.parametrize("cfg_follow,requested,pinned,owned,recording,want", [
    (True, None, False, False, False, (True, "config")),
    (False, None, False, False, False, (False, "config")),
    (False, True, False, False, False, (True, "--follow")),
    (True, False, False, False, False, (False, "--no-follow")),
    (True, None, True, False, False, (False, "pinned")),
    (True, True, False, True, False, (False, "cas exec job")),
    (True, None, False, False, True, (False, "recording accesses")),
])
def test_follow_policy(cfg_follow: bool, requested: bool | None, pinned: bool, owned: bool,
                       recording: bool, want: tuple[bool, str]) -> None:
    cfg = from_dict({"follow": cfg_follow, "ttl": "30s"})
    pol = follow_policy(cfg, requested, pinned=pinned, owned=owned, recording=recording)
    assert (pol.follow, pol.why) == want and pol.ttl == 30.0
    if pol.follow:
        assert (pol.entry_timeout, pol.negative_timeout) == (FOLLOW_TIMEOUT_S, FOLLOW_NEGATIVE_S)
    else:
        assert pol.entry_timeout == pol.negative_timeout == PINNED_TIMEOUT_S


def test_follow_with_a_pinned_revision_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="pinned"):
        follow_policy(from_dict({}), True, pinned=True)


@pytest.mark.parametrize("raw", [{"ttl": "4 minutes"}, {"ttl": "-1s"}, {"ttl": "0s"},
                                 {"ttl": "30d"}, {"ttl": True}, {"ttl": [1]},
                                 {"follow": "yes"}, {"follow": 1}])
def test_bad_follow_settings_are_one_line_errors(raw: dict, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        from_dict(raw)
    assert "\n" not in str(info.value) and "client config" in str(info.value)
    cfg = tmp_path / "c.toml"
    key, value = next(iter(raw.items()))
    cfg.write_text(f"{key} = {value!r}\n".replace("'", '"').replace("True", "true"))
    with pytest.raises(UsageError):
        load(cfg)


# -- a store with revisions ------------------------------------------------------
MTIME = 1_700_000_000  # equal mtimes: an unchanged file is unchanged in stat too


def _tree(kit: Kit, name: str, files: dict[str, bytes]) -> object:
    d = kit.base / "trees" / name
    for rel, data in files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, (MTIME, MTIME))
    for sub in sorted(d.rglob("*"), reverse=True):
        if sub.is_dir():
            os.utime(sub, (MTIME, MTIME))
    return kit.put(d)


# same.txt is larger than inline_max (a chunk): its stat identity does not depend
# on the small files packed beside it, which change.
V1 = {"same.txt": b"unchanged\n" * 2000, "lib/keep.jl": b"x = 1\n",
      "data.bin": bytes(range(256)) * 400, "gone.txt": b"only in 1\n"}
V2 = {"same.txt": b"unchanged\n" * 2000, "lib/keep.jl": b"x = 1\n",
      "data.bin": b"revision two " * 3000, "new.txt": b"only in 2\n"}


@pytest.fixture
def setup(kit: Kit) -> tuple[Kit, object]:
    for name, files in (("v1", V1), ("v2", V2)):
        kit.trees[name] = _tree(kit, name, files)
    kit.publish("rel", 1, kit.trees["v1"])
    return kit, load(kit.config)


def _follower(kit: Kit, cfg) -> tuple[Follower, object]:
    sel = select("rel", cfg)
    built = build_fs(sel, cfg, prefetch=False)
    return Follower(sel, cfg, lambda new: switch_fs(built, new)), built


def test_newer_revision_is_verified_and_switched_open_handles_keep_theirs(setup) -> None:
    kit, cfg = setup
    follower, built = _follower(kit, cfg)
    fs = built.fs
    assert follower.check() == "current"
    old = fs.open("/data.bin")
    first = fs.read("/data.bin", 1000, 0, old.fh)
    kit.publish("rel", 2, kit.trees["v2"])
    assert follower.check() == "switched"
    assert follower.revision == 2 and follower.state.switches == 1
    assert fs.xattrs("/")["user.cas.revision"] == b"2"
    # the open handle reads revision 1 to its end, whatever the path holds now
    rest = fs.read("/data.bin", 1 << 20, 1000, old.fh)
    assert first + rest == V1["data.bin"]
    assert fs.getattr("/data.bin", old.fh)["st_size"] == len(V1["data.bin"])
    new = fs.open("/data.bin")
    assert fs.read("/data.bin", 1 << 20, 0, new.fh) == V2["data.bin"]
    # one kernel inode per path: while the longer revision 1 is open, the path's size
    # covers it (an old reader must not meet EOF early); its own size after
    assert len(V2["data.bin"]) < len(V1["data.bin"])
    assert fs.getattr("/data.bin")["st_size"] == len(V1["data.bin"])
    fs.release(old.fh)
    assert fs.getattr("/data.bin")["st_size"] == len(V2["data.bin"])
    assert fs.read("/new.txt", 100, 0) == V2["new.txt"]
    with pytest.raises(Exception, match="gone.txt"):
        fs.getattr("/gone.txt")
    assert follower.state.last_ok is not None and follower.state.error is None


def test_tampered_and_expired_revisions_are_rejected_then_a_good_one_applies(setup) -> None:
    kit, cfg = setup
    follower, built = _follower(kit, cfg)
    doc = kit.publish("rel", 2, kit.trees["v2"])
    assert follower.check() == "switched"
    kit.write_raw_release("rel", 3, Kit.tamper(doc, revision=3, root=str(kit.trees["v1"])))
    assert follower.check() == "rejected"
    rej = follower.state.rejected
    assert rej["revision"] == 3 and rej["error"] == "BadSignature", rej
    assert follower.revision == 2 and built.fs.xattrs("/")["user.cas.revision"] == b"2"
    assert follower.check() == "rejected"  # it keeps checking, and stays
    kit.publish("rel", 4, kit.trees["v1"], expires_in=-5)
    assert follower.check() == "rejected"
    assert follower.state.rejected["revision"] == 4
    assert "expire" in follower.state.rejected["reason"].lower()
    kit.publish("rel", 5, kit.trees["v1"])
    assert follower.check() == "switched"
    assert follower.revision == 5 and follower.state.rejected is None
    assert built.fs.read("/gone.txt", 100, 0) == V1["gone.txt"]


def test_a_revision_signed_by_an_untrusted_key_is_rejected(setup) -> None:
    kit, cfg = setup
    follower, _ = _follower(kit, cfg)
    kit.publish("rel", 2, kit.trees["v2"], key=kit.other_key)
    assert follower.check() == "rejected"
    assert follower.revision == 1


# -- the page cache model ------------------------------------------------------------
def test_open_policy_never_lets_two_revisions_share_the_page_cache(setup) -> None:
    kit, cfg = setup
    follower, built = _follower(kit, cfg)
    fs = built.fs
    a = fs.open("/data.bin")
    assert (a.keep_cache, a.direct_io) == (True, False)
    same = fs.open("/same.txt")
    kit.publish("rel", 2, kit.trees["v2"])
    assert follower.check() == "switched"
    b = fs.open("/data.bin")  # revision 1 is still open at this path: bypass the cache
    assert b.direct_io
    fs.release(a.fh)
    c = fs.open("/data.bin")  # no old handle left, but the cache may hold revision 1
    assert (c.keep_cache, c.direct_io) == (False, False)
    d = fs.open("/data.bin")
    assert (d.keep_cache, d.direct_io) == (True, False)
    s2 = fs.open("/same.txt")  # unchanged content: nothing to drop
    assert (s2.keep_cache, s2.direct_io) == (True, False)
    for h in (b, c, d, same, s2):
        fs.release(h.fh)
    assert fs.open_handles() == 0


def test_detach_moves_old_handles_off_the_path(setup) -> None:
    kit, cfg = setup
    sel = select("rel", cfg)
    built = build_fs(sel, cfg, prefetch=False)
    fs = built.fs
    old = fs.open("/data.bin")
    keep = fs.open("/same.txt")
    seen: list[list[str]] = []

    def detach(paths: list[str]) -> None:  # what mount.Detacher makes the kernel do
        seen.append(paths)
        for i, p in enumerate(paths):
            fs.moved(p, f"/.cas-detached-2-{i}")

    kit.publish("rel", 2, kit.trees["v2"])
    Follower(sel, cfg, lambda new: switch_fs(built, new, detach)).check()
    assert seen == [["/data.bin"]]  # same.txt is unchanged: it stays
    assert fs.getattr("/.cas-detached-2-0")["st_size"] == len(V1["data.bin"])
    assert fs.read("/.cas-detached-2-0", 1 << 20, 0, old.fh) == V1["data.bin"]
    new = fs.open("/data.bin")  # a fresh kernel inode: nothing to bypass or drop
    assert (new.keep_cache, new.direct_io) == (True, False)
    assert fs.getattr("/data.bin")["st_size"] == len(V2["data.bin"])
    for h in (old, keep, new):
        fs.release(h.fh)
    with pytest.raises(Exception, match="cas-detached"):
        fs.getattr("/.cas-detached-2-0")


def test_a_listed_revision_not_yet_written_is_a_failed_check_not_a_rejection(setup) -> None:
    kit, cfg = setup
    follower, _ = _follower(kit, cfg)
    kit.publish("rel", 2, kit.trees["v2"])
    doc = next(kit.base.rglob("000000000002.release"))
    doc.unlink()  # the index lists 2, its document is not there (yet)
    assert follower.check() == "error"
    assert follower.state.rejected is None and "revision 2" in follower.state.error
    assert follower.revision == 1


# -- inode numbers -------------------------------------------------------------------
def _inos(fs, paths) -> dict[str, int]:
    return {p: fs.getattr(p)["st_ino"] for p in paths}


def test_unchanged_paths_keep_their_inode_across_switch_and_remount(setup) -> None:
    kit, cfg = setup
    follower, built = _follower(kit, cfg)
    paths = ["/same.txt", "/lib", "/lib/keep.jl", "/data.bin"]
    before = _inos(built.fs, paths)
    assert built.fs.getattr("/")["st_ino"] == ROOT_INO
    assert len(set(before.values())) == len(paths)
    _, again = _follower(kit, cfg)  # a remount: a fresh process state
    assert _inos(again.fs, paths) == before
    kit.publish("rel", 2, kit.trees["v2"])
    assert follower.check() == "switched"
    after = _inos(built.fs, paths)
    for p in ("/same.txt", "/lib", "/lib/keep.jl"):
        assert after[p] == before[p], p
    assert after["/data.bin"] != before["/data.bin"]
    assert built.fs.getattr("/")["st_ino"] == ROOT_INO


def test_same_content_at_two_paths_gets_two_inodes(kit: Kit) -> None:
    root = _tree(kit, "dup", {"a.txt": b"same", "b.txt": b"same"})
    kit.publish("dup", 1, root)
    cfg = load(kit.config)
    vfs = build_vfs(select("dup", cfg), select("dup", cfg).source)
    a, b = vfs.inode("/a.txt"), vfs.inode("/b.txt")
    assert a != b and vfs.content_id(vfs.lookup("/a.txt")) == vfs.content_id(vfs.lookup("/b.txt"))


def test_inode_collisions_are_resolved_and_counted(setup) -> None:
    kit, cfg = setup
    sel = select("rel", cfg)
    vfs: VFS = build_vfs(sel, sel.source)
    natural = vfs.inode("/same.txt")
    fresh = build_vfs(sel, sel.source)
    fresh._ino_owner[natural] = b"/some/other\0path"  # as if another path had it
    moved = fresh.inode("/same.txt")
    assert moved != natural and fresh.ino_collisions == 1
    assert 1 < moved < 1 << 63
    assert stable_inode(b"/x", b"k") == stable_inode(b"/x", b"k") != stable_inode(b"/y", b"k")
