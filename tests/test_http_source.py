"""The HTTP source against real servers on loopback: Debian's nginx serving a store
folder made by the real CLI, hostile servers, proxies, and the offline fallback."""

from __future__ import annotations

import concurrent.futures
import os
import random
import shutil
import threading
import time
from pathlib import Path

import pytest
from net_fixtures import NGINX, ForwardProxy, Hostile, LatencyProxy, Nginx, Silent, free_port

from casstore.client import config
from casstore.client.connect import open_client_source
from casstore.client.lastgood import LastVerified, load_verified_or_cached
from casstore.errors import (
    BadSignature,
    NotFound,
    ObjectCorrupt,
    ObjectMissing,
    RemoteError,
    RollbackRefused,
    ServersUnreachable,
    StoreError,
    UsageError,
)
from casstore.format.objects import ObjectId
from casstore.releases.release import SeenRevisions, keygen, load_verified
from casstore.sources import ObjectCache, open_source, prefetch
from casstore.sources.http import HTTPSettings, HTTPSource, parse_proxies
from casstore.sources.local import LocalSource

from helpers import cas

pytestmark = pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed")

FAST = HTTPSettings(connect_timeout=2, read_timeout=2, request_timeout=4, retries=1,
                    backoff=0.05)
TEST_DEADLINE = 60.0  # no call in these tests may take longer: a hang fails the test


def bounded(fn, *args, deadline: float = TEST_DEADLINE):
    """Run ``fn`` in a thread; fail the test (not hang it) if it does not return."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(fn, *args)
        try:
            return fut.result(deadline)
        except concurrent.futures.TimeoutError:
            pytest.fail(f"{fn} did not return within {deadline} s")


def _publish(store: Path, src: Path, key: Path) -> str:
    tree = cas(store, "put", "--name", "tip", str(src), check=True).out.strip()
    cas(store, "release", "create", "julia", tree, "--key", str(key), check=True)
    return tree


@pytest.fixture(scope="module")
def pub(tmp_path_factory):
    """A store with one signed release 'julia' of a small tree, made by the real CLI."""
    d = tmp_path_factory.mktemp("pub")
    src = d / "src"
    (src / "lib").mkdir(parents=True)
    rnd = random.Random(7)
    (src / "lib" / "a.jl").write_text("module A\nend\n")
    (src / "big.bin").write_bytes(rnd.randbytes(1_600_000))  # several chunks
    (src / "mid.bin").write_bytes(rnd.randbytes(200_000))
    key = d / "key"
    pubkey = keygen(key)
    store = d / "store"
    tree = _publish(store, src, key)
    return {"dir": d, "src": src, "store": store, "key": key, "pub": pubkey, "tree": tree}


@pytest.fixture(scope="module")
def nginx(pub, tmp_path_factory):
    n = Nginx(pub["store"], tmp_path_factory.mktemp("nginx")).start()
    yield n
    n.stop()


def objects_of(store: Path) -> list[ObjectId]:
    return sorted(ObjectId.parse("b3-" + p.parent.name + p.name)
                  for p in (store / "objects").glob("*/*") if len(p.name) == 62)


def _server(request, cls, *args):
    srv = cls(*args).start()
    request.addfinalizer(srv.stop)
    return srv


# -- an unmodified nginx is a remote (FORMAT §10.2) --------------------------------------
def test_nginx_serves_objects_refs_index_and_documents(pub, nginx) -> None:
    local = LocalSource(pub["store"])
    src = HTTPSource([nginx.url], FAST)
    try:
        assert src.release_names() == ["julia"]
        assert src.release_revisions("julia") == [1]
        assert src.read_release("julia", 1) == local.read_release("julia", 1)
        assert str(src.read_ref("tip")) == pub["tree"]
        assert src.read_format() == (pub["store"] / "casstore.json").read_bytes()
        rel = load_verified(src, "julia", [pub["pub"]], None)
        assert str(rel.root_id) == pub["tree"]
        oids = objects_of(pub["store"])
        assert len(oids) >= 4
        for oid in oids:
            stored = local.read_stored(oid)
            assert src.read_stored(oid) == stored
            assert src.fetch(oid) == local.fetch(oid)
            assert src.read_head(oid) == stored[:16]
            assert src.stored_size(oid) == len(stored)
        absent = ObjectId.parse("b3-" + "ab" * 32)
        with pytest.raises(ObjectMissing):
            src.fetch(absent)
        assert src.stored_size(absent) is None
        with pytest.raises(NotFound):
            src.read_release("julia", 2)
        with pytest.raises(NotFound):
            src.release_revisions("nope")
        with pytest.raises(NotFound):
            src.read_ref("nope")
    finally:
        src.close()
    assert any("/objects/" in r and r.startswith("HEAD") for r in nginx.requests())


@pytest.mark.slow
def test_cli_get_cat_ls_from_a_url(pub, nginx, tmp_path: Path) -> None:
    env = {"CAS_CONFIG": str(tmp_path / "client.toml")}
    (tmp_path / "client.toml").write_text(f'trusted_keys = ["{pub["pub"]}"]\n')
    dest = tmp_path / "out"
    cas(None, "--store", nginx.url, "get", "julia", str(dest), check=True, env=env)
    for f in ("lib/a.jl", "big.bin", "mid.bin"):
        assert (dest / f).read_bytes() == (pub["src"] / f).read_bytes()
    out = cas(None, "--store", nginx.url, "cat", "julia/lib/a.jl", check=True, env=env).out
    assert out == "module A\nend\n"
    listing = cas(None, "--store", nginx.url, "ls", "tip", check=True, env=env).out
    assert "big.bin" in listing and "lib" in listing
    res = cas(None, "--store", nginx.url + "/nothing-here", "ls", "julia", env=env)
    assert res.code != 0 and "Traceback" not in res.err


# -- fail-over -------------------------------------------------------------------------
def test_failover_from_a_dead_server_and_a_500(request, pub, nginx) -> None:
    oid = objects_of(pub["store"])[0]
    want = LocalSource(pub["store"]).fetch(oid)
    dead = f"http://127.0.0.1:{free_port()}/store"
    broken = _server(request, Hostile, pub["store"], "500")
    src = HTTPSource([dead, broken.url, nginx.url], FAST)
    try:
        assert bounded(src.fetch, oid) == want
        assert broken.object_hits() == 2  # tried, retried once, then the next server
        assert bounded(src.fetch, objects_of(pub["store"])[1])  # sticks to the good one
        assert broken.object_hits() == 2
    finally:
        src.close()


@pytest.mark.parametrize("mode", ["wrong", "truncate", "endless"])
def test_hostile_bytes_are_never_returned(request, pub, mode: str) -> None:
    store = pub["store"]
    local = LocalSource(store)
    big = max(objects_of(store), key=lambda o: len(local.read_stored(o)))
    bad = _server(request, Hostile, store, mode)
    good = _server(request, Hostile, store, "good")
    alone = HTTPSource([bad.url], FAST)
    both = HTTPSource([bad.url, good.url], FAST)
    try:
        with pytest.raises((ObjectCorrupt, RemoteError)) as info:
            bounded(alone.fetch, big)
        assert not isinstance(info.value, ObjectMissing)
        if mode in ("wrong", "endless"):
            assert isinstance(info.value, ObjectCorrupt)
        if mode == "endless":  # cut at the size its header allows, not at 256 MiB
            assert alone.stats.bytes <= len(local.read_stored(big)) + (1 << 18)
        assert bounded(both.fetch, big) == local.fetch(big)
        assert good.object_hits() == 1
    finally:
        alone.close()
        both.close()


@pytest.mark.slow
def test_silent_server_times_out_and_fails_over(request, pub) -> None:
    oid = objects_of(pub["store"])[0]
    silent = _server(request, Silent)
    good = _server(request, Hostile, pub["store"], "good")
    alone = HTTPSource([silent.url], FAST)
    both = HTTPSource([silent.url, good.url], FAST)
    try:
        t0 = time.monotonic()
        with pytest.raises(ServersUnreachable):
            bounded(alone.fetch, oid)
        assert time.monotonic() - t0 >= FAST.read_timeout  # it did wait, within the deadline
        assert bounded(both.fetch, oid) == LocalSource(pub["store"]).fetch(oid)
        assert silent.connections >= 2
    finally:
        alone.close()
        both.close()


def test_a_slow_link_within_the_timeouts_still_works(request, pub, nginx) -> None:
    lag = _server(request, LatencyProxy, nginx.port, 0.05)
    src = HTTPSource([f"{lag.url}/store"], FAST)
    try:
        oid = objects_of(pub["store"])[0]
        assert bounded(src.fetch, oid) == LocalSource(pub["store"]).fetch(oid)
        assert lag.connections >= 1
    finally:
        src.close()


def test_concurrent_reads_of_one_object_make_one_request(request, pub, tmp_path: Path) -> None:
    slow = _server(request, Hostile, pub["store"], "slow")
    slow.slow_s = 0.5
    oids = objects_of(pub["store"])
    want = LocalSource(pub["store"]).fetch(oids[0])
    plain = HTTPSource([slow.url], FAST)
    cached = ObjectCache(HTTPSource([slow.url], FAST), tmp_path / "c", 1 << 30)
    try:
        for n, src in enumerate((plain, cached), start=1):
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                got = list(pool.map(lambda _i, s=src: s.fetch(oids[0]), range(8)))
            assert got == [want] * 8
            assert slow.object_hits() == n
    finally:
        plain.close()
        cached.close()


# -- proxies ----------------------------------------------------------------------------
def test_proxy_from_the_environment(request, pub, nginx, monkeypatch) -> None:
    proxy = _server(request, ForwardProxy)
    oid = objects_of(pub["store"])[0]
    for var in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("http_proxy", proxy.url)
    src = HTTPSource([nginx.url], FAST)
    try:
        assert bounded(src.fetch, oid) == LocalSource(pub["store"]).fetch(oid)
        assert any(oid.hex[2:] in r for r in proxy.requests)
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        before = len(proxy.requests)
        assert bounded(src.read_release, "julia", 1)
        assert len(proxy.requests) == before
    finally:
        src.close()


def test_proxy_list_from_the_config_fails_over_and_direct(request, pub, nginx, tmp_path,
                                                          monkeypatch) -> None:
    proxy = _server(request, ForwardProxy)
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = config.from_dict({"source": [nginx.url], "proxy": [dead, proxy.url],
                            "cache_dir": str(tmp_path / "cache"), "read_timeout": 2,
                            "connect_timeout": 2, "request_timeout": 4}, tmp_path / "c.toml")
    oids = objects_of(pub["store"])
    src = open_client_source(cfg)
    try:
        assert isinstance(src, ObjectCache) and src.folder == tmp_path / "cache" / "objects"
        assert bounded(src.fetch, oids[0]) == LocalSource(pub["store"]).fetch(oids[0])
        assert [r for r in proxy.requests if oids[0].hex[2:] in r]
    finally:
        src.close()
    # DIRECT: no proxy at all, even with a (dead) one in the environment
    monkeypatch.setenv("http_proxy", dead)
    direct = HTTPSource([nginx.url], HTTPSettings(proxies=parse_proxies("DIRECT")))
    try:
        before = len(proxy.requests)
        assert bounded(direct.fetch, oids[1])
        assert len(proxy.requests) == before
    finally:
        direct.close()


def test_client_config_http_keys() -> None:
    cfg = config.from_dict({"source": ["http://a/store", "https://b/store/"],
                            "proxy": "http://p1:3128;http://p2:3128|DIRECT",
                            "connect_timeout": 1.5, "http_parallel": 4,
                            "object_cache_size": "1G"})
    assert cfg.source == ["http://a/store", "https://b/store/"]
    assert cfg.proxy == ["http://p1:3128", "http://p2:3128", "DIRECT"]
    assert cfg.connect_timeout == 1.5 and cfg.http_parallel == 4
    assert cfg.object_cache_bytes == 1 << 30
    assert config.from_dict({"source": "http://a/s"}).source == "http://a/s"
    for bad in ({"source": ["http://a", "/local"]}, {"source": [1]}, {"proxy": "ftp://x"},
                {"proxy": 3}, {"read_timeout": 0}, {"read_timeout": True},
                {"http_parallel": 0}, {"source": {"a": 1}}):
        with pytest.raises(UsageError):
            config.from_dict(bad)
    for bad_spec in (["http://a", "/x"], "ftp://a/b", [], "http:///nohost"):
        with pytest.raises(UsageError):
            open_source(bad_spec)


# -- the object cache and offline -------------------------------------------------------
def test_prefetch_then_offline(request, pub, tmp_path: Path) -> None:
    n = Nginx(pub["store"], tmp_path / "ng").start()
    request.addfinalizer(n.stop)
    oids = objects_of(pub["store"])
    local = LocalSource(pub["store"])
    src = open_source([n.url], cache_dir=tmp_path / "objects", cache_bytes=1 << 30, http=FAST)
    try:
        res = bounded(prefetch, src, oids[:-1])
        assert res.fetched == len(oids) - 1 and not res.failed
        assert bounded(prefetch, src, oids[:-1]).cached == len(oids) - 1
        n.stop()
        for oid in oids[:-1]:  # cached: still served, still verified
            assert bounded(src.fetch, oid) == local.fetch(oid)
        with pytest.raises(ServersUnreachable):  # uncached: a temporary error (EIO)
            bounded(src.fetch, oids[-1])
        assert bounded(prefetch, src, oids).failed.keys() == {oids[-1]}
    finally:
        src.close()
    # a restart: the cache folder is still there
    again = open_source([n.url], cache_dir=tmp_path / "objects", cache_bytes=1 << 30, http=FAST)
    try:
        assert bounded(again.fetch, oids[0]) == local.fetch(oids[0])
    finally:
        again.close()


def _read_release(src, tree: str, dest: Path) -> None:
    """Read every object of the tree (a real restore), so all of it is cached."""
    from casstore.store.restore import restore

    shutil.rmtree(dest, ignore_errors=True)
    restore(src, ObjectId.parse(tree), dest)


def test_boot_offline_uses_the_last_verified_release(request, pub, tmp_path: Path) -> None:
    n = Nginx(pub["store"], tmp_path / "ng").start()
    request.addfinalizer(n.stop)
    state = tmp_path / "state"
    seen = SeenRevisions(state / "seen-revisions.json")
    trusted = [pub["pub"]]

    def source():
        return open_source([n.url], cache_dir=tmp_path / "objects", cache_bytes=1 << 30,
                           http=FAST)

    src = source()
    try:
        sel = bounded(load_verified_or_cached, src, "julia", trusted, seen, state)
        assert not sel.offline and sel.release.revision == 1
        _read_release(src, str(sel.release.root_id), tmp_path / "r1")  # now all cached
    finally:
        src.close()
    assert LastVerified(state).load("julia") == (pub["store"] / "releases" / "julia" /
                                                 "000000000001.release").read_bytes()
    n.stop()  # the node reboots with no server reachable
    src = source()
    try:
        sel = bounded(load_verified_or_cached, src, "julia", trusted, seen, state)
        assert sel.offline and "offline: using the last verified release" in sel.note
        assert sel.status()["offline"] is True
        assert str(sel.release.root_id) == pub["tree"]
        _read_release(src, pub["tree"], tmp_path / "r2")  # from the cache alone
        with pytest.raises(ServersUnreachable):
            bounded(load_verified_or_cached, src, "julia", trusted, seen, state, 2)
        # nothing kept for another name, and an empty cache: refused, not guessed
        with pytest.raises(ServersUnreachable):
            bounded(load_verified_or_cached, src, "other", trusted, seen, state)
        empty = open_source([n.url], cache_dir=tmp_path / "empty", cache_bytes=1 << 30,
                            http=FAST)
        with pytest.raises(ServersUnreachable, match="not in the object cache"):
            bounded(load_verified_or_cached, empty, "julia", trusted, seen, state)
        empty.close()
        # a tampered kept document is refused
        kept = LastVerified(state).path("julia")
        data = kept.read_bytes()
        kept.write_bytes(data.replace(b'"signature": "', b'"signature": "AAAA'))
        with pytest.raises(BadSignature):
            bounded(load_verified_or_cached, src, "julia", trusted, seen, state)
    finally:
        src.close()


def test_no_offline_fallback_on_404_or_an_older_revision(request, pub, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(pub["store"], store, symlinks=True)
    old = tmp_path / "old"
    shutil.copytree(store, old, symlinks=True)
    (pub["src"] / "lib" / "b.jl").write_text("module B\nend\n")
    try:
        _publish(store, pub["src"], pub["key"])
    finally:
        (pub["src"] / "lib" / "b.jl").unlink()
    state = tmp_path / "state"
    seen = SeenRevisions(state / "seen-revisions.json")
    trusted = [pub["pub"]]
    new = _server(request, Hostile, store, "good")
    src = HTTPSource([new.url], FAST)
    sel = bounded(load_verified_or_cached, src, "julia", trusted, seen, state)
    assert sel.release.revision == 2
    src.close()
    stale = _server(request, Hostile, old, "good")  # a mirror frozen at revision 1
    src = HTTPSource([stale.url], FAST)
    with pytest.raises(RollbackRefused):
        bounded(load_verified_or_cached, src, "julia", trusted, seen, state)
    src.close()
    gone = _server(request, Hostile, store, "404")  # the server answers: no such release
    src = HTTPSource([gone.url], FAST)
    with pytest.raises(NotFound):
        bounded(load_verified_or_cached, src, "julia", trusted, seen, state)
    src.close()
    down = _server(request, Hostile, store, "500")  # temporary: the kept revision 2 is used
    src = HTTPSource([down.url], FAST)
    with pytest.raises(ServersUnreachable, match="not in the object cache"):
        bounded(load_verified_or_cached, src, "julia", trusted, seen, state)
    src.close()


def test_a_source_survives_fork(pub, nginx) -> None:
    """A mount daemonises after verifying the release: the child needs its own loop."""
    src = HTTPSource([nginx.url], FAST)
    oids = objects_of(pub["store"])
    try:
        assert bounded(src.fetch, oids[0])
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            try:
                ok = src.fetch(oids[1]) == LocalSource(pub["store"]).fetch(oids[1])
                os._exit(0 if ok else 1)
            except BaseException:
                os._exit(2)
        end = time.monotonic() + TEST_DEADLINE
        while time.monotonic() < end:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("forked child hung")
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        src.close()


def test_a_closed_source_refuses_and_threads_end(nginx) -> None:
    src = HTTPSource([nginx.url], FAST)
    src.release_names()
    mine = [t for t in threading.enumerate() if t.name == "casstore-http"]
    assert mine
    src.close()
    with pytest.raises(UsageError):
        src.release_names()
    assert not any(t.is_alive() for t in mine)


def test_unknown_store_format_refused_and_range_ignoring_server(request, pub,
                                                                tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(pub["store"], store, symlinks=True)
    oid = objects_of(store)[0]
    srv = _server(request, Hostile, store, "good")  # answers Range with the whole body
    src = HTTPSource([srv.url], FAST)
    try:
        assert src.read_head(oid) == LocalSource(store).read_stored(oid)[:16]
        (store / "casstore.json").write_text('{"format": "casstore", "version": 9}')
        with pytest.raises(StoreError, match="unsupported store format"):
            src.release_names()
    finally:
        src.close()
