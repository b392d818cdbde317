"""cas serve, store layout and writes: headers, Range, ETag, strict paths, tokens,
verified uploads and release acceptance (docs/HTTP.md), against a real server."""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import time
from pathlib import Path

import nacl.signing
import pytest

from casstore.distribute.transfer import local_reachable
from casstore.format.layout import object_relpath, release_relpath
from casstore.format.objects import ObjectId, ObjType, encode
from casstore.releases.release import Release, sign
from casstore.server.storeproto import StoreConfig
from casstore.store.publish import publish
from casstore.store.snapshot import put_paths
from casstore.store.writable import Store

from helpers import cas
from serve_helpers import (
    ProcessServer,
    ThreadServer,
    copy_store,
    metric,
    metric_settled,
    new_store,
    object_files,
    raw,
    tmp_files,
    token_for,
)

OBJ = "/objects/{xx}/{rest}"


@pytest.fixture(scope="module")
def pub(tmp_path_factory) -> dict:
    """A published store: release app@1 of a small tree, and the keys."""
    tmp = tmp_path_factory.mktemp("servestore")
    data = tmp / "data"
    (data / "sub").mkdir(parents=True)
    rnd = random.Random(9)
    (data / "big.bin").write_bytes(rnd.randbytes(1_500_000))
    for i in range(4):
        (data / "sub" / f"f{i}.txt").write_bytes(rnd.randbytes(20_000 + i))
    store = Store.init(tmp / "pub")
    sk = nacl.signing.SigningKey.generate()
    root = put_paths(store, [data])
    rel = publish(store, sk, "app", str(root), {}, None, {}, 30)
    oids = local_reachable(store, rel)
    store.close()
    return {"tmp": tmp, "store": tmp / "pub", "sk": sk, "key": sk.verify_key.encode().hex(),
            "root": root, "oids": oids, "data": data}


def serve_copy(pub: dict, tmp: Path, **kw) -> tuple[Path, StoreConfig]:
    store = copy_store(pub["store"], tmp / "served")
    return store, StoreConfig(store, [pub["key"]], **kw)


def path_of(oid: ObjectId) -> str:
    return "/" + object_relpath(oid)


# -- reads -------------------------------------------------------------------------------
def test_layout_reads_headers_and_head(pub: dict, tmp_path: Path) -> None:
    store, cfg = serve_copy(pub, tmp_path, max_age=42)
    with ThreadServer(cfg) as srv:
        for oid in pub["oids"]:
            on_disk = (store / object_relpath(oid)).read_bytes()
            s, h, body = raw(srv.url, "GET", path_of(oid))
            assert (s, body) == (200, on_disk)
            assert h["etag"] == f'"{oid}"'
            assert h["cache-control"] == "public, max-age=31536000, immutable"
            s, h, body = raw(srv.url, "HEAD", path_of(oid))
            assert (s, body, int(h["content-length"])) == (200, b"", len(on_disk))
        for rel in ("releases/_index.json", "releases/app/_index.json",
                    release_relpath("app", 1)):
            s, h, body = raw(srv.url, "GET", "/" + rel)
            assert (s, body) == (200, (store / rel).read_bytes())
            index = rel.endswith("_index.json")  # revalidated, never a TTL (FORMAT §10.2)
            assert h["cache-control"] == ("public, no-cache" if index else "public, max-age=42")
        s, h, body = raw(srv.url, "GET", "/casstore.json")
        assert (s, body) == (200, (store / "casstore.json").read_bytes())
        assert raw(srv.url, "GET", "/releases/app/000000000002.release")[0] == 404
        absent = ObjectId.of(b"never stored")
        assert raw(srv.url, "GET", path_of(absent))[0] == 404
        assert raw(srv.url, "HEAD", path_of(absent))[0] == 404
        # the writer's own files are never served
        for p in ("/index/data.mdb", "/tmp/", "/lock", "/server/tokens.json", "/objects/",
                  "/releases/", "/refs/"):
            assert raw(srv.url, "GET", p)[0] == 404, p
        assert raw(srv.url, "GET", "/healthz")[0] == 200


def test_range_requests(pub: dict, tmp_path: Path) -> None:
    store, cfg = serve_copy(pub, tmp_path)
    oid = max(pub["oids"], key=lambda o: (store / object_relpath(o)).stat().st_size)
    data = (store / object_relpath(oid)).read_bytes()
    n = len(data)
    with ThreadServer(cfg) as srv:
        def get(rng: str, **hdr: str) -> tuple[int, dict, bytes]:
            return raw(srv.url, "GET", path_of(oid), headers={"Range": rng, **hdr})

        s, h, body = get("bytes=0-15")
        assert (s, body, h["content-range"]) == (206, data[:16], f"bytes 0-15/{n}")
        s, h, body = get("bytes=-10")
        assert (s, body, h["content-range"]) == (206, data[-10:], f"bytes {n - 10}-{n - 1}/{n}")
        s, h, body = get(f"bytes=-{n + 100}")  # a suffix longer than the object: all of it
        assert (s, body) == (206, data)
        s, h, body = get("bytes=100-")
        assert (s, body, h["content-range"]) == (206, data[100:], f"bytes 100-{n - 1}/{n}")
        s, h, body = get(f"bytes=5-{n + 1000}")  # last byte beyond the end: clamped
        assert (s, body) == (206, data[5:])
        s, h, body = get(f"bytes={n}-")
        assert (s, h["content-range"], body) == (416, f"bytes */{n}", b"")
        assert get(f"bytes={n + 5}-{n + 9}")[0] == 416
        assert get("bytes=-0")[0] == 416
        # several ranges, nonsense, and an inverted range are ignored: the whole object
        for rng in ("bytes=0-1,5-6", "bytes=abc", "items=0-5", "bytes=9-3", "bytes=-"):
            s, h, body = get(rng)
            assert (s, body) == (200, data), rng
        # If-Range with another validator: the whole object; with ours: the range
        assert get("bytes=0-15", **{"If-Range": '"other"'})[2] == data
        assert get("bytes=0-15", **{"If-Range": f'"{oid}"'})[2] == data[:16]
        s, h, body = raw(srv.url, "HEAD", path_of(oid), headers={"Range": "bytes=0-15"})
        assert (s, h["content-length"], body) == (206, "16", b"")


def test_etag_if_none_match(pub: dict, tmp_path: Path) -> None:
    store, cfg = serve_copy(pub, tmp_path)
    oid = pub["oids"][0]
    with ThreadServer(cfg) as srv:
        for inm in (f'"{oid}"', f'W/"{oid}"', f'"x", "{oid}"', "*"):
            s, h, body = raw(srv.url, "GET", path_of(oid), headers={"If-None-Match": inm})
            assert (s, body, h["etag"]) == (304, b"", f'"{oid}"'), inm
        s, _h, body = raw(srv.url, "GET", path_of(oid), headers={"If-None-Match": '"nope"'})
        assert s == 200 and body
        s, h, _ = raw(srv.url, "GET", "/releases/_index.json")
        s2, _h, body = raw(srv.url, "GET", "/releases/_index.json",
                           headers={"If-None-Match": h["etag"]})
        assert (s, s2, body) == (200, 304, b"")


BAD_PATHS = [
    "/objects/../casstore.json/x", "/objects/ab/../../index/data.mdb",
    "/objects/%2e%2e/%2e%2e", "/objects/%2e%2e/%2e%2e/casstore.json",
    "/objects/ab%2F..%2F..%2Flock/x", "/objects/AB/" + "c" * 62, "/objects/ab/" + "c" * 61,
    "/objects/ab/" + "c" * 63, "/objects/ab/" + "g" * 62, "/objects/ab/" + "c" * 62 + "/x",
    "/objects/b3-ab/" + "c" * 62, "/releases/..%2F..%2Fcasstore.json/x",
    "/releases/%2e%2e/_index.json", "/releases/app/1.release", "/releases/app/..%2F..%2Flock",
    "/releases/app/000000000000.release", "/releases/app/00000000001x.release",
    "/releases/.hidden/_index.json", "/refs/..%2Flock", "/refs/%2Fetc%2Fpasswd", "/refs/.x",
    "//etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/objects/ab/%00",
]


def test_strict_paths_never_serve_other_files(pub: dict, tmp_path: Path) -> None:
    store, cfg = serve_copy(pub, tmp_path)
    (store / "index").mkdir(exist_ok=True)
    secret = b"SECRET-NOT-SERVED"
    (store / "index" / "data.mdb").write_bytes(secret)
    (store / "lock").write_bytes(secret)
    with ThreadServer(cfg) as srv:
        for p in BAD_PATHS:
            s, _h, body = raw(srv.url, "GET", p)
            assert s in (400, 404), (p, s)
            assert secret not in body and b"casstore" not in body, p


def test_symlink_and_fifo_objects_are_not_followed(pub: dict, tmp_path: Path) -> None:
    store, cfg = serve_copy(pub, tmp_path)
    a, b = ObjectId.of(b"planted link"), ObjectId.of(b"planted fifo")
    for oid in (a, b):
        (store / object_relpath(oid)).parent.mkdir(exist_ok=True)
    os.symlink(store / "casstore.json", store / object_relpath(a))
    os.mkfifo(store / object_relpath(b))
    with ThreadServer(cfg) as srv:
        for oid in (a, b):
            s, _h, body = raw(srv.url, "GET", path_of(oid))
            assert s == 500 and b"casstore" not in body


def test_metrics_count_requests_and_bytes(pub: dict, tmp_path: Path) -> None:
    store, cfg = serve_copy(pub, tmp_path)
    with ThreadServer(cfg) as srv:
        total = 0
        for oid in pub["oids"]:
            total += len(raw(srv.url, "GET", path_of(oid))[2])
        raw(srv.url, "GET", path_of(ObjectId.of(b"absent")))
        raw(srv.url, "GET", path_of(pub["oids"][0]), headers={"Range": "bytes=0-15"})
        n = len(pub["oids"])
        assert metric(srv.url, "cas_http_requests_total", route=OBJ, status="200") == n
        assert metric(srv.url, "cas_http_requests_total", route=OBJ, status="404") == 1
        assert metric(srv.url, "cas_http_requests_total", route=OBJ, status="206") == 1
        sent = metric(srv.url, "cas_http_response_body_bytes_total", route=OBJ)
        assert total + 16 <= sent <= total + 16 + 200  # plus the 404's short text
        assert metric(srv.url, "cas_http_errors_total", route=OBJ, kind="client") == 1
        assert metric(srv.url, "cas_http_request_duration_seconds_count", route=OBJ) == n + 2
        assert metric(srv.url, "cas_serve_build_info") == 1
        assert metric(srv.url, "cas_serve_process_resident_memory_bytes") > 10 << 20
        assert metric(srv.url, "cas_serve_process_cpu_seconds") > 0


# -- writes ------------------------------------------------------------------------------
@pytest.mark.slow
def test_writes_need_a_valid_token(pub: dict, tmp_path: Path) -> None:
    store = new_store(tmp_path / "empty")
    token = token_for(store, "alice")
    other = token_for(store, "bob")
    oid = pub["oids"][0]
    body = (pub["store"] / object_relpath(oid)).read_bytes()
    with ThreadServer(StoreConfig(store, [pub["key"]])) as srv:
        for auth in (None, "Bearer ", "Bearer cas_" + "0" * 64, f"Basic {token}", token,
                     f"Bearer {token}x"):
            hdr = {"Authorization": auth} if auth is not None else {}
            s, h, _ = raw(srv.url, "PUT", path_of(oid), body, hdr)
            assert s == 401 and h["www-authenticate"].startswith("Bearer"), auth
            s, _h, _ = raw(srv.url, "POST", "/objects/missing", b'{"ids": []}', hdr)
            assert s == 401
        assert object_files(store) == set()
        cas(store, "serve", "token", "revoke", "bob", check=True)
        s, _h, _ = raw(srv.url, "PUT", path_of(oid), body, {"Authorization": f"Bearer {other}"})
        assert s == 401 and object_files(store) == set()
        s, _h, _ = raw(srv.url, "PUT", path_of(oid), body, {"Authorization": f"Bearer {token}"})
        assert s == 201 and object_files(store) == {object_relpath(oid)}
        s, _h, _ = raw(srv.url, "PUT", path_of(oid), body, {"Authorization": f"Bearer {token}"})
        assert s == 200
    assert cas(store, "serve", "token", "list").out.split()[0] == "alice"
    tf = store / "server" / "tokens.json"
    assert (tf.stat().st_mode & 0o777, tf.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    assert token not in tf.read_text()


def test_bad_objects_are_refused_and_nothing_stored(pub: dict, tmp_path: Path) -> None:
    store = new_store(tmp_path / "empty")
    auth = {"Authorization": f"Bearer {token_for(store)}"}
    good = encode(ObjType.CHUNK, b"the real bytes" * 100)
    oid = ObjectId.of(b"the real bytes" * 100)
    flipped = bytearray(good)
    flipped[-1] ^= 1
    cases = [
        encode(ObjType.CHUNK, b"other bytes"),  # valid object, wrong id
        bytes(flipped),  # one bit off
        good[:10],  # truncated header
        b"",
        b"CSO1" + b"\x09" * 12 + good[16:],  # unknown type
    ]
    with ThreadServer(StoreConfig(store, [pub["key"]], max_object=4096)) as srv:
        for body in cases:
            s, _h, text = raw(srv.url, "PUT", path_of(oid), body, auth)
            assert s == 400, text
        s, _h, _ = raw(srv.url, "PUT", path_of(oid), b"x" * 5000, auth)
        assert s == 413
        s, _h, _ = raw(srv.url, "PUT", "/objects/ab/" + "c" * 61, good, auth)
        assert s == 400
        assert object_files(store) == set() and tmp_files(store) == []
        s, _h, _ = raw(srv.url, "PUT", path_of(oid), good, auth)
        assert s == 201
        s, _h, body = raw(srv.url, "POST", "/objects/missing", json.dumps(
            {"ids": [str(oid), str(ObjectId.of(b"nope"))]}).encode(), auth)
        assert (s, json.loads(body)["missing"]) == (200, [str(ObjectId.of(b"nope"))])
        for bad in (b"[]", b'{"ids": ["b3-xyz"]}', b"not json",
                    json.dumps({"ids": [str(oid)] * 1001}).encode()):
            assert raw(srv.url, "POST", "/objects/missing", bad, auth)[0] == 400


def test_concurrent_uploads_of_one_object(pub: dict, tmp_path: Path) -> None:
    store = new_store(tmp_path / "empty")
    auth = {"Authorization": f"Bearer {token_for(store)}"}
    payload = random.Random(3).randbytes(300_000)
    oid, body = ObjectId.of(payload), encode(ObjType.CHUNK, payload)
    with ThreadServer(StoreConfig(store, [pub["key"]])) as srv:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda _i: raw(srv.url, "PUT", path_of(oid), body, auth)[0],
                                  range(16)))
    assert set(codes) <= {200, 201} and 201 in codes
    assert Store.open(store).fetch(oid) == payload
    assert tmp_files(store) == []
    assert cas(store, "fsck").code == 0


def _release_doc(sk: nacl.signing.SigningKey, name: str, rev: int, root: ObjectId,
                 meta: dict | None = None) -> bytes:
    now = int(time.time())
    return sign(Release(name, rev, str(root), now, now + 86400, {}, None, meta or {}), sk)


def _upload(srv_url: str, pub: dict, auth: dict, oids: list[ObjectId]) -> None:
    for oid in oids:
        body = (pub["store"] / object_relpath(oid)).read_bytes()
        assert raw(srv_url, "PUT", path_of(oid), body, auth)[0] == 201


def test_release_acceptance(pub: dict, tmp_path: Path) -> None:
    store = new_store(tmp_path / "empty")
    auth = {"Authorization": f"Bearer {token_for(store)}"}
    sk, root = pub["sk"], pub["root"]
    stranger = nacl.signing.SigningKey.generate()
    with ThreadServer(StoreConfig(store, [pub["key"]])) as srv:
        def put(name: str, rev: int, doc: bytes) -> tuple[int, bytes]:
            s, _h, text = raw(srv.url, "PUT", "/" + release_relpath(name, rev), doc, auth)
            return s, text

        # objects missing: 422, and nothing written
        assert pub["oids"][-1] != root
        _upload(srv.url, pub, auth, pub["oids"][:-1])
        s, text = put("app", 3, _release_doc(sk, "app", 3, root))
        assert s == 422 and str(pub["oids"][-1]).encode() in text
        assert put("app", 3, _release_doc(sk, "app", 3, ObjectId.of(b"no tree")))[0] == 422
        _upload(srv.url, pub, auth, pub["oids"][-1:])
        assert not (store / "releases" / "app").exists()
        assert put("app", 3, _release_doc(stranger, "app", 3, root))[0] == 403  # untrusted
        tampered = json.loads(_release_doc(sk, "app", 3, root))
        tampered["body"] = _release_doc(sk, "app", 4, root) and json.loads(
            _release_doc(sk, "app", 4, root))["body"]
        assert put("app", 3, json.dumps(tampered).encode())[0] == 400  # bad signature
        assert put("app", 3, _release_doc(sk, "app", 4, root))[0] == 400  # path mismatch
        assert put("app", 3, _release_doc(sk, "other", 3, root))[0] == 400
        assert put("app", 3, b"{not json")[0] == 400
        old = sign(Release("app", 3, str(root), 1, 2, {}, None, {}), sk)
        assert put("app", 3, old)[0] == 400  # expired
        assert put("app", 3, b"x" * ((1 << 20) + 1))[0] == 413
        assert not (store / "releases" / "app").exists()
        doc3 = _release_doc(sk, "app", 3, root)
        assert put("app", 3, doc3) == (201, b"release stored\n")
        assert put("app", 3, doc3)[0] == 200  # the same document again: idempotent
        assert put("app", 3, _release_doc(sk, "app", 3, root, meta={"x": "y"}))[0] == 409
        assert put("app", 2, _release_doc(sk, "app", 2, root))[0] == 409  # older
        assert put("app", 5, _release_doc(sk, "app", 5, ObjectId.of(b"no tree")))[0] == 422
        idx = json.loads((store / "releases" / "app" / "_index.json").read_bytes())
        assert idx["revisions"] == [3]
        assert json.loads((store / "releases" / "_index.json").read_bytes())["names"] == ["app"]
        s, _h, body = raw(srv.url, "GET", "/" + release_relpath("app", 3))
        assert (s, body) == (200, doc3)
    # no trusted keys: release uploads are off (403), objects are still accepted
    with ThreadServer(StoreConfig(store, [])) as srv:
        s, _h, _ = raw(srv.url, "PUT", "/" + release_relpath("app", 9),
                       _release_doc(sk, "app", 9, root), auth)
        assert s == 403
    assert cas(store, "fsck").code == 0


def test_real_process_serves_without_pkg_options(pub: dict, tmp_path: Path) -> None:
    store, _cfg = serve_copy(pub, tmp_path)
    with ProcessServer(store, tmp_path / "serve.log") as srv:
        oid = pub["oids"][0]
        s, h, body = raw(srv.url, "GET", path_of(oid))
        assert (s, body) == (200, (store / object_relpath(oid)).read_bytes())
        assert raw(srv.url, "GET", "/objects/%2e%2e/" + "c" * 62)[0] == 400
        assert metric_settled(srv.url, "cas_http_requests_total", route=OBJ, status="200") == 1
        s, _h, _ = raw(srv.url, "PUT", "/" + release_relpath("app", 7), b"{}",
                       {"Authorization": "Bearer nope"})
        assert s == 401
    assert srv.proc.returncode == 0


@pytest.mark.slow
def test_workers_share_the_socket_and_sum_metrics(pub: dict, tmp_path: Path) -> None:
    store, _cfg = serve_copy(pub, tmp_path)
    with ProcessServer(store, tmp_path / "serve.log", "--workers", "2") as srv:
        kids = Path(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children").read_text().split()
        assert len(kids) == 2
        for _ in range(3):
            for oid in pub["oids"]:
                assert raw(srv.url, "GET", path_of(oid))[0] == 200
        n = 3 * len(pub["oids"])
        # every request opens a new connection, so both workers answer some; the
        # counters of both are summed
        assert metric_settled(srv.url, "cas_http_requests_total", route=OBJ, status="200") == n
        # the workers' memory is summed over the live ones; build info is one series
        rss = metric(srv.url, "cas_serve_process_resident_memory_bytes")
        assert rss > 2 * (10 << 20)
        assert metric(srv.url, "cas_serve_build_info") == 1
    assert srv.proc.returncode == 0
    for pid in kids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
            f"/proc/{pid}/status").read_text()


@pytest.mark.parametrize("how", ["truncated", "fifo"])
def test_a_damaged_index_is_an_error_answer_not_a_dead_server(pub: dict, tmp_path: Path,
                                                              how: str) -> None:
    """The first authenticated POST /objects/missing opens the index: a truncated data.mdb
    killed the real process with SIGBUS, a FIFO hung it.  Now it answers 500, logs one
    line naming --rebuild-index for the operator, and keeps serving reads."""
    store, _cfg = serve_copy(pub, tmp_path)
    auth = {"Authorization": f"Bearer {token_for(store)}"}
    data = store / "index" / "data.mdb"
    assert data.stat().st_size >= 8192
    if how == "truncated":
        data.write_bytes(data.read_bytes()[:5000])
    else:
        data.unlink()
        os.mkfifo(data)
    with ProcessServer(store, tmp_path / "serve.log") as srv:
        s, _h, body = raw(srv.url, "POST", "/objects/missing",
                          json.dumps({"ids": [str(pub["oids"][0])]}).encode(), auth)
        assert s == 500, (s, body)
        oid = pub["oids"][0]
        assert raw(srv.url, "GET", path_of(oid))[0] == 200
        assert srv.proc.poll() is None
    assert srv.proc.returncode == 0
    log = (tmp_path / "serve.log").read_text()
    assert "data.mdb" in log and "--rebuild-index" in log, log
