"""Tier 1-2: signed releases: tampering, wrong keys, expiry, replay, rollback."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import pytest

from casstore.errors import (
    BadSignature,
    FormatError,
    ObjectMissing,
    ReleaseExpired,
    RollbackRefused,
    Unsigned,
    UntrustedKey,
    UsageError,
)
from casstore.format import release_index
from casstore.format.layout import object_path
from casstore.format.objects import ObjectId
from casstore.format.trees import decode_tree
from casstore.releases.release import (
    SIGNING_CONTEXT,
    Release,
    SeenRevisions,
    keygen,
    load_secret,
    load_verified,
    parse_public,
    sign,
    verify,
)
from casstore.sources.local import LocalSource
from casstore.store.writable import Store

from helpers import assert_one_line_error, cas

ROOT = "b3-" + "ab" * 32


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Path, str, Path, str]:
    a, b = tmp_path / "a.key", tmp_path / "b.key"
    return a, keygen(a), b, keygen(b)


def _rel(rev: int = 1, expires_in: int = 3600) -> Release:
    now = int(time.time())
    return Release("julia", rev, ROOT, now, now + expires_in)


def test_good_release_verifies(keys) -> None:
    a, pa, _b, _pb = keys
    rel = verify(sign(_rel(), load_secret(a)), [pa])
    assert rel.root == ROOT and rel.revision == 1


def test_tampered_body_refused(keys) -> None:
    a, pa, _b, _pb = keys
    doc = json.loads(sign(_rel(), load_secret(a)))
    body = json.loads(base64.b64decode(doc["body"]))
    body["root"] = "b3-" + "cd" * 32
    doc["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    with pytest.raises(BadSignature):
        verify(json.dumps(doc).encode(), [pa])


def test_wrong_key_refused(keys) -> None:
    a, _pa, _b, pb = keys
    with pytest.raises(UntrustedKey):
        verify(sign(_rel(), load_secret(a)), [pb])


def test_key_swap_refused(keys) -> None:
    """Replacing the key field with a trusted key does not help a forger."""
    a, _pa, _b, pb = keys
    doc = json.loads(sign(_rel(), load_secret(a)))
    doc["key"] = pb
    with pytest.raises(BadSignature):
        verify(json.dumps(doc).encode(), [pb])


def test_unsigned_refused(keys) -> None:
    a, pa, _b, _pb = keys
    doc = json.loads(sign(_rel(), load_secret(a)))
    doc["signature"] = ""
    with pytest.raises(Unsigned):
        verify(json.dumps(doc).encode(), [pa])


def test_expired_refused(keys) -> None:
    a, pa, _b, _pb = keys
    with pytest.raises(ReleaseExpired):
        verify(sign(_rel(expires_in=-5), load_secret(a)), [pa])


def test_replayed_older_revision_refused(tmp_path: Path, keys) -> None:
    a, pa, _b, _pb = keys
    seen = SeenRevisions(tmp_path / "seen.json")
    for rev in (1, 2):
        rel = verify(sign(_rel(rev), load_secret(a)), [pa])
        seen.check(rel)
        seen.record(rel)
    with pytest.raises(RollbackRefused):
        seen.check(verify(sign(_rel(1), load_secret(a)), [pa]))


def test_each_bad_release_has_its_own_message(tmp_path: Path, keys) -> None:
    a, pa, _b, pb = keys
    good = json.loads(sign(_rel(), load_secret(a)))
    unsigned = dict(good, signature="")
    tampered = dict(good, body=base64.b64encode(b'{"x":1}').decode())
    sk = load_secret(a)
    cases = [(UntrustedKey, [pb], sign(_rel(), sk)),
             (ReleaseExpired, [pa], sign(_rel(expires_in=-1), sk)),
             (Unsigned, [pa], json.dumps(unsigned).encode()),
             (BadSignature, [pa], json.dumps(tampered).encode())]
    msgs = []
    for expected, trusted, doc in cases:
        with pytest.raises(expected) as ei:
            verify(doc, trusted)
        assert type(ei.value) is expected
        msgs.append((type(ei.value), str(ei.value)))
    seen = SeenRevisions(tmp_path / "s.json")
    seen.record(_rel(5))
    with pytest.raises(RollbackRefused) as ei:
        seen.check(_rel(4))
    msgs.append((type(ei.value), str(ei.value)))
    assert len({m[0] for m in msgs}) == 5
    assert len({m[1] for m in msgs}) == 5


def test_parse_public_forms(keys, tmp_path: Path) -> None:
    a, pa, _b, _pb = keys
    assert parse_public(pa) == pa
    assert parse_public(f"casstore-ed25519 {pa}") == pa
    assert parse_public(str(a) + ".pub") == pa


# -- through the CLI --------------------------------------------------------------
def _store_with_release(tmp_path: Path) -> tuple[Path, Path, str]:
    store = tmp_path / "store"
    src = tmp_path / "src"
    src.mkdir()
    (src / "v").write_text("one")
    key = tmp_path / "k"
    cas(None, "keygen", str(key), check=True)
    t1 = cas(store, "put", str(src), check=True).out.strip()
    cas(store, "release", "create", "julia", t1, "--key", str(key), check=True)
    return store, key, t1


@pytest.mark.slow
def test_cli_rollback_publishes_new_revision(tmp_path: Path) -> None:
    store, key, t1 = _store_with_release(tmp_path)
    (tmp_path / "src" / "v").write_text("two")
    t2 = cas(store, "put", str(tmp_path / "src"), check=True).out.strip()
    cas(store, "release", "create", "julia", t2, "--key", str(key), check=True)
    cas(store, "release", "rollback", "julia", "--to", "1", "--key", str(key), check=True)
    rows = json.loads(cas(store, "--json", "release", "list", "julia", check=True).out)
    assert [(r["revision"], r["root"]) for r in rows] == [(1, t1), (2, t2), (3, t1)]
    pub = str(key) + ".pub"
    seen = tmp_path / "seen.json"
    cas(store, "release", "verify", "julia", "--trusted-key", pub, "--seen", str(seen), check=True)
    res = cas(store, "release", "verify", "julia@2", "--trusted-key", pub, "--seen", str(seen))
    assert_one_line_error(res)
    assert "older than revision 3" in res.err and res.code == RollbackRefused.exit_code


def test_cli_tampered_file_refused(tmp_path: Path) -> None:
    store, key, _t1 = _store_with_release(tmp_path)
    path = store / "releases" / "julia" / "000000000001.release"
    doc = json.loads(path.read_text())
    body = json.loads(base64.b64decode(doc["body"]))
    body["expires"] += 10**6
    doc["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    path.write_text(json.dumps(doc))
    res = cas(store, "release", "verify", "julia", "--trusted-key", str(key) + ".pub")
    assert_one_line_error(res)
    assert res.code == BadSignature.exit_code


def test_release_renamed_on_disk_refused(tmp_path: Path, keys) -> None:
    """A valid document copied under another revision number is a replay."""
    store, key, _t1 = _store_with_release(tmp_path)
    folder = store / "releases" / "julia"
    (folder / "000000000009.release").write_bytes((folder / "000000000001.release").read_bytes())
    # a hostile mirror lists it in the (unsigned) release index too
    (folder / "_index.json").write_bytes(release_index.encode_revisions("julia", [1, 9]))
    with pytest.raises(BadSignature, match="replayed"):
        load_verified(LocalSource(store), "julia", [parse_public(str(key) + ".pub")], None)


def test_keygen_refuses_overwrite(tmp_path: Path) -> None:
    cas(None, "keygen", str(tmp_path / "k"), check=True)
    assert_one_line_error(cas(None, "keygen", str(tmp_path / "k")))


def test_create_refuses_what_verifiers_would_refuse(tmp_path: Path) -> None:
    store, key, t1 = _store_with_release(tmp_path)
    # variants without the baseline level
    res = cas(store, "release", "create", "julia", t1, "--key", str(key),
              "--variant", f"x86-64-v3={t1}")
    assert_one_line_error(res)
    assert "baseline" in res.err
    res = cas(store, "release", "create", "julia", t1, "--key", str(key),
              "--variant", f"pentium={t1}", "--baseline", "pentium")
    assert_one_line_error(res)
    assert "unknown CPU level" in res.err
    blob = cas(store, "put", str(tmp_path / "src" / "v"), check=True).out.strip()
    assert_one_line_error(cas(store, "release", "create", "julia", blob, "--key", str(key)))
    revs = json.loads(cas(store, "--json", "release", "list", "julia", check=True).out)
    assert [r["revision"] for r in revs] == [1]


def test_rollback_never_resigns_a_tampered_revision(tmp_path: Path) -> None:
    store, key, _t1 = _store_with_release(tmp_path)
    path = store / "releases" / "julia" / "000000000001.release"
    doc = json.loads(path.read_text())
    body = json.loads(base64.b64decode(doc["body"]))
    body["root"] = "b3-" + "ee" * 32
    doc["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    path.write_text(json.dumps(doc))
    res = cas(store, "release", "rollback", "julia", "--to", "1", "--key", str(key))
    assert_one_line_error(res)
    assert res.code == BadSignature.exit_code
    assert sorted(p.name for p in path.parent.glob("*.release")) == ["000000000001.release"]


@pytest.mark.slow
def test_release_names_are_verified_when_keys_are_configured(tmp_path: Path) -> None:
    store, key, t1 = _store_with_release(tmp_path)
    res = cas(store, "ls", "julia", check=True)
    assert "without a signature check" in res.err and "v" in res.out.split()
    cfg = tmp_path / "client.toml"
    cfg.write_text(f'trusted_keys = ["{key}.pub"]\n')
    ok = cas(store, "ls", "julia", env={"CAS_CONFIG": str(cfg)}, check=True)
    assert ok.err == "" and "v" in ok.out.split()
    path = store / "releases" / "julia" / "000000000001.release"
    doc = json.loads(path.read_text())
    body = json.loads(base64.b64decode(doc["body"]))
    body["meta"] = {"evil": 1}
    doc["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    path.write_text(json.dumps(doc))
    bad = cas(store, "ls", "julia", env={"CAS_CONFIG": str(cfg)})
    assert_one_line_error(bad)
    assert bad.code == BadSignature.exit_code


# -- one-line errors for bad bodies, specs, expiry, incomplete trees -------
def _resign(store: Path, key: Path, body_text: bytes, rev: int = 1) -> None:
    """Replace revision ``rev`` with a document whose (trusted) signature covers ``body_text``."""
    sk = load_secret(key)
    sig = sk.sign(SIGNING_CONTEXT + body_text).signature
    doc = {"format": "casstore-release", "version": 1, "key": sk.verify_key.encode().hex(),
           "body": base64.b64encode(body_text).decode(),
           "signature": base64.b64encode(sig).decode()}
    (store / "releases" / "julia" / f"{rev:012d}.release").write_text(json.dumps(doc))


def _body_text(t1: str, **change) -> bytes:
    now = int(time.time())
    body = {"name": "julia", "revision": 1, "root": t1, "created": now, "expires": now + 3600,
            "variants": {}, "baseline": None, "meta": {}}
    body.update(change)
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.slow
@pytest.mark.parametrize("change", [
    {"expires": "2099-01-01"},  # was exit 70 (TypeError)
    {"expires": float("nan")},  # was accepted: NaN never expires
    {"expires": float("inf")},  # was accepted: Infinity never expires
    {"revision": True},  # was accepted: bool is an int in Python
    {"created": -5},
    {"expires": 10**20},
    {"variants": ["x86-64"]},  # was exit 70 (AttributeError)
])
def test_bad_signed_body_is_a_one_line_format_error(tmp_path: Path, change: dict) -> None:
    store, key, t1 = _store_with_release(tmp_path)
    _resign(store, key, _body_text(t1, **change))
    res = cas(store, "release", "verify", "julia", "--trusted-key", str(key) + ".pub")
    assert_one_line_error(res)
    assert res.code == FormatError.exit_code, res


def test_good_resigned_body_still_verifies(tmp_path: Path) -> None:
    """The crafting helper itself is sound: only the bad field makes the cases fail."""
    store, key, t1 = _store_with_release(tmp_path)
    _resign(store, key, _body_text(t1))
    cas(store, "release", "verify", "julia", "--trusted-key", str(key) + ".pub", check=True)


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ("verify", "julia@abc"), ("verify", "julia@-1"), ("verify", "julia@0"),
    ("show", "julia@0"), ("show", "julia@abc"), ("show", "julia@"),
])
def test_bad_revision_specs_are_errors(tmp_path: Path, args: tuple[str, str]) -> None:
    store, key, _t1 = _store_with_release(tmp_path)
    res = cas(store, "release", *args, "--trusted-key", str(key) + ".pub")
    assert_one_line_error(res)
    assert res.code == UsageError.exit_code


@pytest.mark.slow
@pytest.mark.parametrize("days", ["nan", "-1", "0", "inf", "1e300"])
def test_bad_expiry_is_refused(tmp_path: Path, days: str) -> None:
    store, key, t1 = _store_with_release(tmp_path)
    res = cas(store, "release", "create", "julia", t1, "--key", str(key), "--expires-days", days)
    assert_one_line_error(res)
    assert res.code == UsageError.exit_code
    res = cas(store, "release", "rollback", "julia", "--to", "1", "--key", str(key),
              "--expires-days", days)
    assert_one_line_error(res)
    assert [r["revision"] for r in json.loads(cas(store, "--json", "release", "list",
                                                  check=True).out)] == [1]


@pytest.mark.slow
def test_create_refuses_an_incomplete_tree(tmp_path: Path) -> None:
    """Release create once signed a release whose subtrees were missing."""
    store, key, _t1 = _store_with_release(tmp_path)
    src = tmp_path / "src2"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "sub" / "deeper" / "big").write_bytes(os.urandom(100_000))
    tree = cas(store, "put", str(src), check=True).out.strip()
    s = Store.open(store)
    sub = next(e for e in decode_tree(s.fetch(ObjectId.parse(tree))) if e.name == b"sub")
    deeper = next(e for e in decode_tree(s.fetch(sub.oid)) if e.name == b"deeper")
    big = decode_tree(s.fetch(deeper.oid))[0]
    object_path(store, big.oid).unlink()  # a chunk deep inside
    res = cas(store, "release", "create", "julia", tree, "--key", str(key))
    assert_one_line_error(res)
    assert res.code == ObjectMissing.exit_code and "sub/deeper/big" in res.err
    object_path(store, sub.oid).unlink()  # a whole subtree
    res = cas(store, "release", "create", "other", tree, "--key", str(key),
              "--variant", f"x86-64={_t1}")
    assert_one_line_error(res)
    assert res.code == ObjectMissing.exit_code and "root/sub" in res.err
    assert [r["name"] for r in json.loads(cas(store, "--json", "release", "list",
                                              check=True).out)] == ["julia"]


@pytest.mark.slow
def test_list_shows_every_good_document_and_reports_bad_ones(tmp_path: Path) -> None:
    store, key, t1 = _store_with_release(tmp_path)
    for _ in range(2):
        cas(store, "release", "create", "julia", t1, "--key", str(key), check=True)
    (store / "releases" / "julia" / "000000000002.release").write_text("{not json")
    res = cas(store, "--json", "release", "list")
    assert res.code == FormatError.exit_code and "Traceback" not in res.err
    rows = json.loads(res.out)
    assert [r["revision"] for r in rows] == [1, 2, 3]
    assert "error" in rows[1] and rows[0]["root"] == rows[2]["root"] == t1
    text = cas(store, "release", "list")
    assert "julia@1" in text.out and "julia@3" in text.out and "DAMAGED" in text.out
    assert_one_line_error(text)


@pytest.mark.slow
@pytest.mark.parametrize("line", ["source = 5", "state_dir = {}", "cache_dir = []",
                                  "arch = 3", "cache_size = true", "cache_size = -1",
                                  'source = ["https://example.org/store", "/local"]',
                                  'proxy = "ftp://proxy:21"', "read_timeout = 0"])
def test_bad_client_config_values_are_usage_errors(tmp_path: Path, line: str) -> None:
    cfg = tmp_path / "client.toml"
    cfg.write_text(line + "\n")
    res = cas(None, "status", str(tmp_path), "--config", str(cfg))
    assert_one_line_error(res)
    assert res.code == UsageError.exit_code
    assert "client config" in res.err or "not a size" in res.err
