"""The release index (FORMAT §6.4): listing without readdir, update order, tolerance of
an index that runs ahead or behind, older stores, and damaged index files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from casstore.errors import FormatError, NotFound
from casstore.format import release_index
from casstore.format.objects import ObjType
from casstore.format.trees import encode_tree
from casstore.releases.release import keygen, load_secret, load_unverified, load_verified, newest
from casstore.sources.local import LocalSource
from casstore.store.publish import next_revision, publish
from casstore.store.writable import Store, StoreSettings

from helpers import cas


@pytest.fixture()
def pub(tmp_path: Path):
    store = Store.init(tmp_path / "store", StoreSettings(durable=False))
    key = tmp_path / "k"
    pk = keygen(key)
    tree = store.put_raw(ObjType.TREE, encode_tree([]))
    sk = load_secret(key)

    def release(name: str) -> int:
        return publish(store, sk, name, str(tree), {}, None, {}, 1).revision

    yield store, release, pk
    store.close()


def _no_readdir(monkeypatch) -> None:
    def refuse(*_a, **_k):
        raise AssertionError("a reader listed a folder")
    monkeypatch.setattr(os, "listdir", refuse)
    monkeypatch.setattr(os, "scandir", refuse)
    monkeypatch.setattr(Path, "iterdir", refuse)


def test_readers_list_names_and_revisions_without_readdir(pub, monkeypatch) -> None:
    store, release, pk = pub
    for name in ("b", "a", "b", "b"):
        release(name)
    source = LocalSource(store.root)
    _no_readdir(monkeypatch)
    assert source.release_names() == ["a", "b"]
    assert source.release_revisions("b") == [1, 2, 3]
    assert load_verified(source, "b", [pk], None).revision == 3
    with pytest.raises(NotFound):
        source.release_revisions("c")


def test_index_files_and_update_order(pub, monkeypatch) -> None:
    store, release, _pk = pub
    rel = store.root / "releases"
    assert json.loads((rel / "_index.json").read_text())["names"] == []  # from init
    import casstore.store.writable as store_mod

    written: list[str] = []
    real = store_mod.atomic_write

    def recording(dest, *a, **k):
        written.append(str(Path(dest).relative_to(store.root)))
        return real(dest, *a, **k)

    monkeypatch.setattr(store_mod, "atomic_write", recording)
    release("julia")
    assert written == ["releases/julia/000000000001.release", "releases/julia/_index.json",
                       "releases/_index.json"]
    written.clear()
    release("julia")  # the names file is unchanged, so not rewritten
    assert written == ["releases/julia/000000000002.release", "releases/julia/_index.json"]
    assert json.loads((rel / "_index.json").read_text()) == {
        "format": "casstore-release-index", "version": 1, "names": ["julia"]}
    doc = json.loads((rel / "julia" / "_index.json").read_text())
    assert doc["revisions"] == [1, 2] and doc["name"] == "julia"


def test_index_ahead_of_documents(pub) -> None:
    """A mirror copied the index before the newest document: use the newest that exists."""
    store, release, pk = pub
    release("julia")
    release("julia")
    (store.root / "releases" / "julia" / "_index.json").write_bytes(
        release_index.encode_revisions("julia", [1, 2, 3, 4]))
    source = LocalSource(store.root)
    assert newest(source, "julia")[0] == 2
    assert load_verified(source, "julia", [pk], None).revision == 2
    assert load_unverified(source, "julia").revision == 2
    res = cas(store.root, "--json", "release", "list", "julia", check=True)
    assert [r["revision"] for r in json.loads(res.out)] == [1, 2]
    # a name listed before its own index exists has no revisions yet
    (store.root / "releases" / "_index.json").write_bytes(
        release_index.encode_names(["julia", "later"]))
    assert source.release_revisions("later") == []
    with pytest.raises(NotFound):
        newest(source, "later")


def test_index_behind_documents(pub) -> None:
    """A document not yet listed is not seen (unless asked for by number)."""
    store, release, pk = pub
    release("julia")
    release("julia")
    (store.root / "releases" / "julia" / "_index.json").write_bytes(
        release_index.encode_revisions("julia", [1]))
    source = LocalSource(store.root)
    assert load_verified(source, "julia", [pk], None).revision == 1
    assert load_verified(source, "julia", [pk], None, 2).revision == 2
    # the publisher counts documents, not the index: no revision number is reused
    assert next_revision(store, "julia") == 3
    assert release("julia") == 3
    assert source.release_revisions("julia") == [1, 2, 3]  # and the index is repaired


def test_older_store_without_index_falls_back_to_readdir(pub) -> None:
    store, release, pk = pub
    release("a")
    release("b")
    release("b")
    for p in (store.root / "releases").rglob("_index.json"):
        p.unlink()
    source = LocalSource(store.root)
    assert source.release_names() == ["a", "b"]
    assert source.release_revisions("b") == [1, 2]
    assert load_verified(source, "b", [pk], None).revision == 2
    # the next publish indexes every document already there, for every name
    assert release("a") == 2
    assert json.loads((store.root / "releases" / "_index.json").read_text())["names"] == ["a",
                                                                                           "b"]
    assert json.loads((store.root / "releases" / "b" / "_index.json").read_text()
                      )["revisions"] == [1, 2]


@pytest.mark.parametrize("text", [
    b"garbage", b"[]", b'{"format": "casstore-release-index", "version": 2, "names": []}',
    b'{"format": "casstore-release-index", "version": 1, "names": ["b", "a"]}',
    b'{"format": "casstore-release-index", "version": 1, "names": ["../x"]}',
    b'{"format": "casstore-release-index", "version": 1, "names": [5]}',
])
def test_damaged_names_index_is_an_error(pub, text: bytes) -> None:
    store, release, _pk = pub
    release("a")
    (store.root / "releases" / "_index.json").write_bytes(text)
    with pytest.raises(FormatError):
        LocalSource(store.root).release_names()


@pytest.mark.parametrize("revs", ["[2, 1]", "[1, 1]", "[0]", "[true]", "[1.5]", "[NaN]", "{}"])
def test_damaged_revisions_index_is_an_error(pub, revs: str) -> None:
    store, release, _pk = pub
    release("a")
    (store.root / "releases" / "a" / "_index.json").write_text(
        '{"format": "casstore-release-index", "version": 1, "name": "a", "revisions": '
        + revs + "}")
    with pytest.raises(FormatError):
        LocalSource(store.root).release_revisions("a")


def test_index_for_another_name_is_refused(pub) -> None:
    store, release, _pk = pub
    release("a")
    (store.root / "releases" / "a" / "_index.json").write_bytes(
        release_index.encode_revisions("b", [1]))
    with pytest.raises(FormatError, match="not 'a'"):
        LocalSource(store.root).release_revisions("a")


def test_huge_index_refused_before_reading(pub) -> None:
    store, release, _pk = pub
    release("a")
    with open(store.root / "releases" / "_index.json", "r+b") as f:
        f.truncate(1 << 30)
    t = time.monotonic()
    with pytest.raises(FormatError, match="too large"):
        LocalSource(store.root).release_names()
    assert time.monotonic() - t < 5


def test_writer_view_includes_unlisted_documents(pub) -> None:
    """gc and the publisher see a document an interrupted publish left unlisted; a
    reader does not (yet)."""
    store, release, _pk = pub
    release("a")
    release("a")
    (store.root / "releases" / "a" / "_index.json").write_bytes(
        release_index.encode_revisions("a", [1]))
    (store.root / "releases" / "_index.json").write_bytes(release_index.encode_names([]))
    assert LocalSource(store.root).release_names() == []
    assert store.release_names() == ["a"]
    assert store.release_revisions("a") == [1, 2]
    from casstore.store.roots import roots

    problems: list[str] = []
    assert any("a@2" in label for label, _ in roots(store, problems))  # gc marks its trees
    assert problems == []

