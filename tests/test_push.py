"""cas push / cas pull against cas serve: only missing objects move, the release goes
last, interrupted transfers resume, concurrent pushes are safe, pulls verify."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web
from net_fixtures import ForwardProxy, free_port

from casstore.distribute.transfer import local_reachable, push
from casstore.errors import CasError, ServersUnreachable
from casstore.format.layout import object_relpath
from casstore.releases.release import load_secret, load_unverified
from casstore.server.storeproto import StoreConfig
from casstore.sources.transport import HTTPSettings
from casstore.store.publish import publish
from casstore.store.snapshot import put_paths
from casstore.store.writable import Store

from helpers import assert_one_line_error, cas, make_tree, snapshot
from serve_helpers import (
    ProcessServer,
    ThreadServer,
    metric,
    new_store,
    object_files,
    pub_hex,
    token_for,
    wait_quiet,
)


def _many_files(folder: Path, n: int, seed: int) -> None:
    """n files that are one chunk each (so many objects to move)."""
    rnd = random.Random(seed)
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"f{i:03d}.bin").write_bytes(rnd.randbytes(100_000 + i))


@pytest.fixture(scope="module")
def pub(tmp_path_factory) -> dict:
    """Publisher store: app (a varied tree), bulk (many objects), and a/b overlapping."""
    tmp = tmp_path_factory.mktemp("push")
    cas(None, "keygen", str(tmp / "key"), check=True)
    sk = load_secret(tmp / "key")
    make_tree(tmp / "app", big=3 << 20)
    _many_files(tmp / "bulk", 40, 1)
    _many_files(tmp / "shared", 12, 2)
    store = Store.init(tmp / "pub")
    out = {"tmp": tmp, "store": tmp / "pub", "key": tmp / "key", "pubkey": tmp / "key.pub",
           "trees": {}, "oids": {}}
    for name, paths in {"app": [tmp / "app"], "bulk": [tmp / "bulk"],
                        "a": [tmp / "shared"], "b": [tmp / "shared", tmp / "app"]}.items():
        root = put_paths(store, paths)
        rel = publish(store, sk, name, str(root), {}, None, {}, 30)
        out["oids"][name] = {object_relpath(o) for o in local_reachable(store, rel)}
    store.close()
    return out


def _push_json(pub: dict, url: str, spec: str, token: str, *extra: str):
    return cas(pub["store"], "--json", "push", url, spec, *extra, env={"CAS_TOKEN": token})


@pytest.mark.slow
def test_push_into_empty_store_then_pull_gives_identical_files(pub: dict, tmp_path: Path) -> None:
    served = new_store(tmp_path / "served")
    token = token_for(served)
    with ProcessServer(served, tmp_path / "serve.log", "--trusted-key",
                       str(pub["pubkey"])) as srv:
        res = _push_json(pub, srv.url, "app", token)
        assert res.code == 0, res.err
        first = json.loads(res.out)
        n = len(pub["oids"]["app"])
        assert (first["objects"], first["moved"], first["release_written"]) == (n, n, True)
        assert object_files(served) == pub["oids"]["app"]
        assert metric(srv.url, "cas_objects_received_total") == n
        again = json.loads(_push_json(pub, srv.url, "app@1", token).out)
        assert (again["moved"], again["release_written"]) == (0, False)
        assert metric(srv.url, "cas_objects_received_total") == n
        # no token, or a wrong one: refused, one-line error
        res = cas(pub["store"], "push", srv.url, "app", env={"CAS_TOKEN": ""})
        assert res.code == 61 and "Traceback" not in res.err
        res = cas(pub["store"], "push", srv.url, "app", env={"CAS_TOKEN": "cas_" + "1" * 64})
        assert res.code == 61 and "refused the token" in res.err
        # pull into another empty store, verified with the publisher's key
        dest = tmp_path / "dest"
        res = cas(dest, "--json", "pull", srv.url, "app", "--trusted-key", str(pub["pubkey"]))
        assert res.code == 0, res.err
        got = json.loads(res.out)
        assert (got["revision"], got["moved"], got["release_written"]) == (1, n, True)
        again = json.loads(cas(dest, "--json", "pull", srv.url, "app", "--trusted-key",
                               str(pub["pubkey"]), check=True).out)
        assert (again["moved"], again["release_written"]) == (0, False)
    cas(dest, "get", "app", str(tmp_path / "out"), check=True)
    assert snapshot(tmp_path / "out") == snapshot(pub["tmp"] / "app")
    assert cas(served, "fsck").code == 0 and cas(dest, "fsck").code == 0


@pytest.mark.slow
def test_pull_verifies_release_and_objects(pub: dict, tmp_path: Path) -> None:
    served = new_store(tmp_path / "served")
    token = token_for(served)
    cas(None, "keygen", str(tmp_path / "other"), check=True)
    with ThreadServer(StoreConfig(served, [pub_hex(pub["pubkey"])])) as srv:
        push(Store.open(pub["store"]), srv.url, "bulk", None, token)
        dest = tmp_path / "dest"
        res = cas(dest, "pull", srv.url, "bulk", "--trusted-key", str(tmp_path / "other.pub"))
        assert res.code == 12 and "untrusted" in res.err  # UntrustedKey
        assert object_files(dest) == set()
        assert cas(dest, "pull", srv.url, "nope", "--trusted-key",
                   str(pub["pubkey"])).code == 7  # NotFound
        # one object damaged on the server: the pull fails and never stores it
        victim = sorted(pub["oids"]["bulk"])[5]
        data = bytearray((served / victim).read_bytes())
        data[-1] ^= 0xFF
        os.chmod(served / victim, 0o644)
        (served / victim).write_bytes(bytes(data))
        res = cas(dest, "pull", srv.url, "bulk", "--trusted-key", str(pub["pubkey"]))
        assert res.code == 5 and "does not match" in res.err, res.err
        assert victim not in object_files(dest)
        assert not (dest / "releases" / "bulk").exists()
    assert cas(dest, "fsck").code == 0


def _fault(state: dict):
    """Object PUTs succeed until state['left'] is used up, then get 503 (or wait
    state['delay'] seconds first)."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        if request.method == "PUT" and request.path.startswith("/objects/"):
            if state.get("delay"):
                await __import__("asyncio").sleep(state["delay"])
            if state.get("left") is not None:
                if state["left"] <= 0:
                    return web.Response(status=503, text="injected failure\n")
                state["left"] -= 1
        return await handler(request)

    return middleware


@pytest.mark.slow
def test_push_interrupted_by_server_failure_resumes(pub: dict, tmp_path: Path) -> None:
    served = new_store(tmp_path / "served")
    token = token_for(served)
    state: dict = {"left": 7}
    cfg = StoreConfig(served, [pub_hex(pub["pubkey"])])
    local = Store.open(pub["store"])
    with ThreadServer(cfg, [_fault(state)]) as srv:
        with pytest.raises(CasError):
            push(local, srv.url, "bulk", None, token,
                 settings=HTTPSettings(parallel=2, retries=1, backoff=0.01))
        wait_quiet(srv.url)
        stored = object_files(served)
        assert 0 < len(stored) <= 7
        assert not (served / "releases" / "bulk").exists()  # the release goes last
        state["left"] = None
        stats = push(local, srv.url, "bulk", None, token, settings=HTTPSettings(parallel=4))
    need = pub["oids"]["bulk"]
    assert stats.moved == len(need) - len(stored)  # only what was missing
    assert stats.release_written and object_files(served) == need
    assert cas(served, "fsck").code == 0


@pytest.mark.slow
def test_killed_push_process_resumes(pub: dict, tmp_path: Path) -> None:
    served = new_store(tmp_path / "served")
    token = token_for(served)
    state: dict = {"delay": 0.2}
    cfg = StoreConfig(served, [pub_hex(pub["pubkey"])])
    with ThreadServer(cfg, [_fault(state)]) as srv:
        proc = subprocess.Popen([sys.executable, "-m", "casstore", "--store", str(pub["store"]),
                                 "push", srv.url, "bulk", "--jobs", "1"],
                                env=dict(os.environ, CAS_TOKEN=token),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while metric(srv.url, "cas_objects_received_total") < 3:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        wait_quiet(srv.url)  # an upload in flight has finished (or failed) before counting
        stored = object_files(served)
        assert 3 <= len(stored) < len(pub["oids"]["bulk"])
        assert not (served / "releases" / "bulk").exists()
        state["delay"] = 0
        res = cas(pub["store"], "--json", "push", srv.url, "bulk", env={"CAS_TOKEN": token})
        assert res.code == 0, res.err
        stats = json.loads(res.out)
    assert stats["moved"] == len(pub["oids"]["bulk"]) - len(stored)
    assert object_files(served) == pub["oids"]["bulk"]
    assert cas(served, "fsck").code == 0


@pytest.mark.slow
def test_concurrent_pushes_of_overlapping_releases(pub: dict, tmp_path: Path) -> None:
    served = new_store(tmp_path / "served")
    token = token_for(served)
    with ProcessServer(served, tmp_path / "serve.log", "--trusted-key",
                       str(pub["pubkey"])) as srv:
        env = dict(os.environ, CAS_TOKEN=token)
        env.pop("CAS_DEBUG", None)
        procs = [subprocess.Popen([sys.executable, "-m", "casstore", "--store",
                                   str(pub["store"]), "push", srv.url, name],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for name in ("a", "b")]
        outs = [p.communicate(timeout=300) for p in procs]
        for p, (_o, e) in zip(procs, outs, strict=True):
            assert p.returncode == 0, e
    assert object_files(served) == pub["oids"]["a"] | pub["oids"]["b"]
    for name in ("a", "b"):
        assert load_unverified(Store.open(served), name).revision == 1
    assert cas(served, "fsck").code == 0


@pytest.mark.slow
def test_push_pull_and_store_url_go_through_the_client_config(pub: dict, tmp_path: Path) -> None:
    """cas push, cas pull and --store URL reads take the client config's proxy (and
    timeouts): through a dead proxy nothing reaches the server, through a live one
    every request goes by it."""
    served = new_store(tmp_path / "served")
    token = token_for(served)
    cfg = tmp_path / "client.toml"
    dead = free_port()
    proxy = ForwardProxy().start()
    try:
        with ProcessServer(served, tmp_path / "serve.log", "--trusted-key",
                           str(pub["pubkey"])) as srv:
            cfg.write_text(f'proxy = "http://127.0.0.1:{dead}"\nconnect_timeout = 2\n')
            env = {"CAS_CONFIG": str(cfg), "CAS_TOKEN": token}
            res = cas(pub["store"], "push", srv.url, "app", env=env)
            assert_one_line_error(res)
            assert res.code == ServersUnreachable.exit_code, res.err
            assert metric(srv.url, "cas_http_requests_total", method="POST") == 0
            cfg.write_text('proxy = "DIRECT"\n')
            cas(pub["store"], "push", srv.url, "app", check=True, env=env)
            assert not proxy.requests
            cfg.write_text(f'proxy = "{proxy.url}"\n'
                           f'trusted_keys = ["{pub_hex(pub["pubkey"])}"]\n')
            res = cas(tmp_path / "dest", "--json", "pull", srv.url, "app", env=env)
            assert res.code == 0, res.err
            n = len(pub["oids"]["app"])
            assert json.loads(res.out)["moved"] == n
            gets = [r for r in proxy.requests if r.startswith(f"GET {srv.url}/objects/")]
            assert len(gets) == n  # every object came through the proxy
            before = len(proxy.requests)
            cas(None, "--store", srv.url, "get", "app", str(tmp_path / "out"), check=True,
                env=env)
            assert len(proxy.requests) > before
            assert snapshot(tmp_path / "out") == snapshot(pub["tmp"] / "app")
    finally:
        proxy.stop()
