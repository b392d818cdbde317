"""The ObjectSource seam: bounded, fstat-first local reads, error classes, KnownBad
delegation, open_source, and Store containing (not being) a LocalSource."""

from __future__ import annotations

import errno
import inspect
import os
import time
from pathlib import Path

import pytest

from casstore.errors import (
    FormatError,
    NotFound,
    ObjectCorrupt,
    ObjectMissing,
    RemoteError,
    StoreError,
    UsageError,
)
from casstore.format.layout import MAX_RELEASE_DOC, MAX_STORED_SIZE, object_path, release_path
from casstore.format.objects import HEADER_SIZE, ObjectId, ObjType, encode
from casstore.sources import LocalSource, ObjectCache, open_source, stored_type
from casstore.sources.base import ObjectSource
from casstore.sources.knownbad import KnownBad
from casstore.sources.mem import MemSource
from casstore.store.writable import Store

from helpers import assert_one_line_error, cas


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "store", create=True)
    yield s
    s.close()


def _put(store: Store, data: bytes, kind: ObjType = ObjType.CHUNK) -> ObjectId:
    oid = store.put_raw(kind, data)
    return oid


def _replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


# -- bounds: FIFOs, symlinks, folders and huge files are refused before reading ----
def test_fifo_object_is_corrupt_at_once(store: Store) -> None:
    oid = _put(store, b"x" * 1000)
    _replace_with_fifo(object_path(store.root, oid))
    for call in (store.source.read_stored, store.source.read_head, store.source.fetch,
                 store.source.stored_size):
        with pytest.raises(ObjectCorrupt, match="not a regular file"):
            call(oid)


def test_fifo_object_cat_and_fsck_finish_with_one_line(tmp_path: Path) -> None:
    """A FIFO planted in place of an object hung `cas cat` and fsck."""
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(100_000))
    st = tmp_path / "store"
    oid = cas(st, "put", str(src), check=True).out.strip()
    _replace_with_fifo(object_path(st, ObjectId.parse(oid)))
    res = cas(st, "cat", oid, timeout=60)  # the old code blocks in open() forever
    assert_one_line_error(res)
    assert res.code == ObjectCorrupt.exit_code and "not a regular file" in res.err
    res = cas(st, "fsck", timeout=60)
    assert res.code != 0 and "Traceback" not in res.err


def test_symlinked_object_is_not_followed(store: Store, tmp_path: Path) -> None:
    good = _put(store, b"good bytes" * 100)
    oid = _put(store, b"other bytes" * 100)
    path = object_path(store.root, oid)
    path.unlink()
    path.symlink_to(object_path(store.root, good))
    with pytest.raises(ObjectCorrupt, match="not a regular file"):
        store.source.read_stored(oid)
    with pytest.raises(ObjectCorrupt):
        store.source.stored_size(oid)


def test_folder_in_place_of_object_is_corrupt(store: Store) -> None:
    oid = _put(store, b"y" * 500)
    path = object_path(store.root, oid)
    path.unlink()
    path.mkdir()
    with pytest.raises(ObjectCorrupt, match="not a regular file"):
        store.source.read_stored(oid)


def test_oversized_object_refused_before_reading(store: Store) -> None:
    oid = _put(store, b"z" * 500)
    path = object_path(store.root, oid)
    with open(path, "r+b") as f:
        f.truncate(MAX_STORED_SIZE + 1)  # sparse: no disk used
    t = time.monotonic()
    with pytest.raises(ObjectCorrupt, match="too large"):
        store.source.read_stored(oid)
    assert time.monotonic() - t < 5  # reading 258 MiB of zeros would also be slow


@pytest.mark.slow
def test_oversized_release_file_refused_before_reading(tmp_path: Path) -> None:
    """A 1 GB release file was read whole before the 1 MiB check."""
    st = tmp_path / "store"
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    key = tmp_path / "k"
    cas(None, "keygen", str(key), check=True)
    tree = cas(st, "put", str(src), check=True).out.strip()
    cas(st, "release", "create", "r", tree, "--key", str(key), check=True)
    path = release_path(st, "r", 1)
    with open(path, "r+b") as f:
        f.truncate(1 << 30)  # sparse 1 GB
    source = LocalSource(st)
    with pytest.raises(FormatError, match="too large"):
        source.read_release("r", 1)
    # A reader that read first would need 1 GB; the CLI must refuse in a small memory.
    res = cas(st, "release", "show", "r", timeout=60)
    assert_one_line_error(res)
    assert "too large" in res.err and str(MAX_RELEASE_DOC) in res.err


def test_oversized_ref_and_format_refused(store: Store) -> None:
    (store.root / "refs" / "big").write_bytes(b"b3-" + b"0" * 5000)
    with pytest.raises(FormatError, match="too large"):
        store.source.read_ref("big")
    (store.root / "refs" / "junk").write_bytes(b"not an id\n")
    with pytest.raises(FormatError, match="damaged"):
        store.source.read_ref("junk")
    with pytest.raises(NotFound):
        store.source.read_ref("absent")


def test_transient_os_errors_are_remote_errors(store: Store, monkeypatch) -> None:
    """EIO / ETIMEDOUT / ESTALE (NFS) mean "retry", not "corrupt" or "missing"."""
    oid = _put(store, b"w" * 300)
    real_read = os.read
    for code in (errno.EIO, errno.ETIMEDOUT, errno.ESTALE):
        def failing(fd: int, n: int, code: int = code) -> bytes:
            raise OSError(code, os.strerror(code))
        monkeypatch.setattr(os, "read", failing)
        with pytest.raises(RemoteError, match="temporary"):
            store.source.read_stored(oid)
        monkeypatch.setattr(os, "read", real_read)
    kb = KnownBad(store.source)
    monkeypatch.setattr(os, "read", lambda fd, n: (_ for _ in ()).throw(OSError(errno.EIO, "x")))
    with pytest.raises(RemoteError):
        kb.fetch(oid)
    monkeypatch.setattr(os, "read", real_read)
    assert kb.fetch(oid) == b"w" * 300  # a temporary error is never remembered


def test_missing_object_and_release(store: Store) -> None:
    oid = ObjectId.of(b"never stored")
    with pytest.raises(ObjectMissing):
        store.source.read_stored(oid)
    assert store.source.stored_size(oid) is None
    with pytest.raises(NotFound):
        store.source.read_release("nothing", 1)


def test_read_head_and_stored_type_read_only_the_header(store: Store) -> None:
    data = os.urandom(200_000)
    oid = _put(store, data, ObjType.BLOB)
    head = store.source.read_head(oid)
    assert len(head) == HEADER_SIZE
    assert head == encode(ObjType.BLOB, data)[:HEADER_SIZE]
    assert stored_type(store.source, oid) == ObjType.BLOB
    assert store.source.stored_size(oid) == object_path(store.root, oid).stat().st_size


# -- composition ------------------------------------------------------------------
_METHODS = [n for n, _ in inspect.getmembers(ObjectSource, inspect.isfunction)
            if not n.startswith("_")]


class Recording:
    """An inner source that records which methods were called."""

    def __init__(self, inner: ObjectSource) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        attr = getattr(self.inner, name)
        self.calls.append(name)
        return attr


def test_interface_is_complete() -> None:
    assert set(_METHODS) == {"read_stored", "fetch", "read_head", "stored_size", "read_ref",
                             "read_format", "release_names", "release_revisions",
                             "read_release", "close"}
    for cls in (LocalSource, KnownBad, ObjectCache, Store, MemSource):
        missing = [m for m in _METHODS if m != "close" and not callable(getattr(cls, m, None))]
        assert not missing, (cls, missing)


def test_knownbad_delegates_every_method(store: Store, tmp_path: Path) -> None:
    oid = _put(store, b"q" * 100)
    store.set_ref("r", oid)
    rec = Recording(store.source)
    kb = KnownBad(rec)  # type: ignore[arg-type]
    kb.read_stored(oid)
    kb.fetch(oid, ObjType.CHUNK)
    kb.read_head(oid)
    kb.stored_size(oid)
    assert kb.read_ref("r") == oid
    assert kb.read_format() is not None
    kb.release_names()
    with pytest.raises(NotFound):
        kb.release_revisions("none")
    with pytest.raises(NotFound):
        kb.read_release("none", 1)
    kb.close()
    assert set(rec.calls) == set(_METHODS)


def test_store_contains_a_local_source(store: Store) -> None:
    assert not isinstance(store, LocalSource)
    assert isinstance(store.source, LocalSource) and store.source.root == store.root
    oid = _put(store, b"s" * 100)
    assert store.fetch(oid) == store.source.fetch(oid) == b"s" * 100


def test_open_source(store: Store, tmp_path: Path) -> None:
    src = open_source(str(store.root))
    assert isinstance(src, LocalSource) and src.root == store.root.resolve()
    assert isinstance(open_source([store.root]), LocalSource)
    for bad in ("s3://bucket", 5, "", [store.root, store.root]):  # URLs: test_http_source
        with pytest.raises(UsageError):
            open_source(bad)  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        open_source(tmp_path / "nothing-here")


@pytest.mark.slow
@pytest.mark.parametrize("text", [b"[]", b"{}", b"not json",
                                  b'{"format": "casstore", "version": 9}'])
def test_bad_format_document_is_one_line(tmp_path: Path, text: bytes) -> None:
    """casstore.json as [] used to be exit 70 (AttributeError)."""
    st = tmp_path / "store"
    cas(st, "init", check=True)
    (st / "casstore.json").write_bytes(text)
    for args in (("stat",), ("release", "list")):
        res = cas(st, *args)
        assert_one_line_error(res)
        assert res.code == StoreError.exit_code


def test_huge_format_document_refused_before_reading(tmp_path: Path) -> None:
    st = tmp_path / "store"
    cas(st, "init", check=True)
    with open(st / "casstore.json", "r+b") as f:
        f.truncate(1 << 30)
    res = cas(st, "stat")
    assert_one_line_error(res)
    assert "too large" in res.err
