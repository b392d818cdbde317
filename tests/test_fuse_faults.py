"""Damaged stores and bad releases against a real mount."""

from __future__ import annotations

import errno
import json
import os
import random
import time
from pathlib import Path

import pytest

from casstore.errors import BadSignature, ReleaseExpired, RollbackRefused, Unsigned, UntrustedKey
from casstore.format.layout import object_path
from casstore.view.reader import TreeReader, root_entry

from fuse_fixtures import Kit, Mounter, mounted, run_cas

pytestmark = pytest.mark.fuse


def _flip(path: Path) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_damaged_object_gives_eio_only_where_used(kit: Kit, mounter: Mounter,
                                                  damage: str) -> None:
    rnd = random.Random(5)
    src = kit.base / "src"
    src.mkdir()
    files = {"multi.bin": rnd.randbytes(6 << 20), "single.bin": rnd.randbytes(500_000),
             "other.bin": rnd.randbytes(5 << 20), "small.txt": b"inline\n",
             "medium.bin": rnd.randbytes(200_000)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    root = kit.put(src)
    kit.publish("dmg", 1, root)
    reader = TreeReader(kit.store)
    multi = reader.file_chunk_ids(reader.lookup(root_entry(root), "multi.bin"))
    single = reader.file_chunk_ids(reader.lookup(root_entry(root), "single.bin"))
    assert len(multi) >= 3 and len(single) == 1
    bad = [multi[-1], single[0]]
    for oid in bad:
        path = object_path(kit.store.root, oid)
        _flip(path) if damage == "corrupt" else path.unlink()
    mp = mounter.mount("dmg")
    for name in ("multi.bin", "single.bin"):
        with pytest.raises(OSError) as info:
            (mp / name).read_bytes()
        assert info.value.errno == errno.EIO, name
    # The healthy start of the damaged multi-chunk file still reads.
    with open(mp / "multi.bin", "rb") as f:
        assert os.pread(f.fileno(), 4096, 0) == files["multi.bin"][:4096]
    for name in ("other.bin", "small.txt", "medium.bin"):
        assert (mp / name).read_bytes() == files[name], name
    proc = mounter.procs[-1][0]
    assert proc.poll() is None  # the daemon keeps serving
    assert int(os.getxattr(mp, "user.cas.nioerr")) >= 2
    deadline = time.monotonic() + 5
    while True:  # the daemon rewrites its status file right after an error
        st = json.loads(run_cas("--json", "status", "--config", str(kit.config),
                                str(mp)).stdout)
        if st["errors"].get("eio", 0) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert st["errors"]["eio"] >= 2 and st["errors"][damage] >= 2
    log = mounter.output()
    for oid in bad:
        assert str(oid) in log, f"no log line names {oid}"


def _mount_fails(kit: Kit, *args: str) -> tuple[int, str]:
    mp = kit.base / "refused"
    mp.mkdir(exist_ok=True)
    res = run_cas("mount", "--config", str(kit.config), *args, str(mp))
    assert not mounted(mp)
    assert "Traceback" not in res.stderr
    return res.returncode, res.stderr


def _base_release(kit: Kit) -> bytes:
    src = kit.base / "rsrc"
    src.mkdir(exist_ok=True)
    (src / "f").write_bytes(b"x")
    return kit.publish("rel", 1, kit.put(src))


def test_unsigned_refused(kit: Kit) -> None:
    kit.write_raw_release("rel", 2, Kit.unsign(_base_release(kit)))
    code, err = _mount_fails(kit, "rel")
    assert code == Unsigned.exit_code and "not signed" in err


def test_tampered_refused(kit: Kit) -> None:
    doc = _base_release(kit)
    kit.write_raw_release("rel", 2, Kit.tamper(doc, revision=2))
    code, err = _mount_fails(kit, "rel")
    assert code == BadSignature.exit_code and "does not verify" in err


def test_expired_refused(kit: Kit) -> None:
    _base_release(kit)
    kit.publish("rel", 2, _root(kit), expires_in=-60)
    code, err = _mount_fails(kit, "rel")
    assert code == ReleaseExpired.exit_code and "expired" in err


def test_wrong_key_refused(kit: Kit) -> None:
    _base_release(kit)
    kit.publish("rel", 2, _root(kit), key=kit.other_key)
    code, err = _mount_fails(kit, "rel")
    assert code == UntrustedKey.exit_code and "untrusted key" in err


@pytest.mark.slow
def test_older_than_seen_refused(kit: Kit, mounter: Mounter) -> None:
    _base_release(kit)
    kit.publish("rel", 2, _root(kit))
    mp = mounter.mount("rel")  # records revision 2 as seen
    assert (mp / "f").read_bytes() == b"x"
    mounter.cleanup()
    code, err = _mount_fails(kit, "--revision", "1", "rel")
    assert code == RollbackRefused.exit_code and "older than revision 2" in err


def test_error_codes_are_distinct() -> None:
    codes = [c.exit_code for c in (Unsigned, BadSignature, ReleaseExpired, UntrustedKey,
                                   RollbackRefused)]
    assert len(set(codes)) == len(codes) and 0 not in codes


def test_no_trusted_keys_refuses(kit: Kit) -> None:
    _base_release(kit)
    kit.config.write_text('source = "store"\nstate_dir = "state"\ncache_dir = "cache"\n')
    code, err = _mount_fails(kit, "rel")
    assert code != 0 and "no trusted_keys" in err


def _root(kit: Kit):
    return kit.put(kit.base / "rsrc")
