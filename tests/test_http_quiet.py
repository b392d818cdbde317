"""HTTP CLI calls and refused HTTP mounts end without aiohttp's "Unclosed client
session" / "Unclosed connector" warnings: real ``cas`` processes against Debian's
nginx on loopback."""

from __future__ import annotations

import os

import pytest
from net_fixtures import NGINX, Nginx, free_port

from casstore.errors import NotFound, ServersUnreachable, UntrustedKey

from fuse_fixtures import Kit, mounted, run_cas

pytestmark = pytest.mark.skipif(not os.path.exists(NGINX), reason="needs nginx")


def _quiet(res, code: int) -> None:
    assert res.returncode == code, res.stderr
    assert "Unclosed" not in res.stderr and "connector" not in res.stderr, res.stderr
    assert "Traceback" not in res.stderr, res.stderr


def test_no_unclosed_session_warnings(kit: Kit, request) -> None:
    src = kit.base / "src"
    src.mkdir()
    (src / "small.txt").write_text("hello\n")
    kit.publish("app", 1, kit.put(src))
    kit.publish("bad", 1, kit.put(src), key=kit.other_key)
    nginx = Nginx(kit.store.root, kit.base / "nginx").start()
    request.addfinalizer(nginx.stop)
    url = nginx.url
    _quiet(run_cas("--store", url, "ls", "app"), 0)
    res = run_cas("--store", url, "cat", "app/small.txt")
    _quiet(res, 0)
    assert res.stdout == "hello\n"
    _quiet(run_cas("--store", url, "cat", "app/nope"), NotFound.exit_code)
    _quiet(run_cas("--store", url, "get", "app", str(kit.base / "out")), 0)
    _quiet(run_cas("--store", url, "release", "list"), 0)
    mp = kit.base / "mnt"
    mp.mkdir()
    for name, code in (("appp", NotFound.exit_code), ("bad", UntrustedKey.exit_code)):
        kit.config.write_text(f'trusted_keys = ["release.key.pub"]\nsource = "{url}"\n'
                              'cache_dir = "cache"\nstate_dir = "state"\n')
        _quiet(run_cas("mount", "--config", str(kit.config), name, str(mp)), code)
    dead = f"http://127.0.0.1:{free_port()}/store"
    kit.config.write_text(f'trusted_keys = ["release.key.pub"]\nsource = "{dead}"\n'
                          'cache_dir = "cache"\nstate_dir = "state2"\nconnect_timeout = 2\n')
    _quiet(run_cas("mount", "--config", str(kit.config), "app", str(mp)),
           ServersUnreachable.exit_code)
    assert not mounted(mp)
