"""The nginx configuration that docs/HTTP.md gives sites, served exactly as written
(only ``listen`` and ``root`` changed): the headers it promises, nothing outside the
layout served, no listings, no symlinks followed, ``//`` merged, conditional requests,
and a real FUSE mount of a release from it."""

from __future__ import annotations

import os
import random
import re
import subprocess
from pathlib import Path

import pytest
from net_fixtures import NGINX, free_port, nginx_conf, wait_port

from casstore.format.layout import object_relpath

from fuse_fixtures import Kit, Mounter
from helpers import terminate
from serve_helpers import raw

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not os.path.exists(NGINX) or not os.path.exists("/dev/fuse"),
                                reason="needs nginx and /dev/fuse")


def documented_server_block() -> str:
    """The ```nginx block of docs/HTTP.md, as a site would copy it."""
    text = (ROOT / "docs" / "HTTP.md").read_text()
    m = re.search(r"<!-- nginx-config:[^\n]*-->\n```nginx\n(.*?)\n```", text, re.S)
    assert m, "docs/HTTP.md has no nginx block"
    return m.group(1)


@pytest.fixture
def nginx(kit: Kit, tmp_path: Path):
    """nginx with the documented block serving the kit's store; (url, store root)."""
    block = documented_server_block()
    port = free_port()
    store = kit.store.root
    block, n1 = re.subn(r"^(\s*)listen 80;", rf"\1listen 127.0.0.1:{port};", block, flags=re.M)
    block, n2 = re.subn(r"^(\s*)root /srv/casstore;", rf"\1root {store};", block, flags=re.M)
    assert n1 == n2 == 1
    d = tmp_path / "nginx"
    d.mkdir()
    (d / "nginx.conf").write_text(nginx_conf(d, block, connections=256))
    proc = subprocess.Popen([NGINX, "-p", str(d), "-c", str(d / "nginx.conf"), "-g",
                             "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, 10)
        yield f"http://127.0.0.1:{port}", store
    finally:
        terminate(proc, 15)
        proc.stderr.close()  # type: ignore[union-attr]


def test_documented_nginx_config_headers_and_mount(kit: Kit, mounter: Mounter, nginx,
                                                   tmp_path: Path) -> None:
    url, store = nginx
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(5)
    files = {"a.bin": rnd.randbytes(400_000), "small.txt": b"hello\n"}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    root = kit.put(src)
    kit.publish("app", 1, root)
    (store / "server").mkdir(exist_ok=True)
    (store / "server" / "tokens.json").write_text("{}")
    (store / "refs").mkdir(exist_ok=True)
    (store / "refs" / "r1").write_text(str(root) + "\n")
    obj = "/" + object_relpath(root)

    s, h, body = raw(url, "GET", obj)
    assert (s, h["cache-control"]) == (200, "public, max-age=31536000, immutable")
    assert body == (store / object_relpath(root)).read_bytes()
    assert raw(url, "GET", "/" + obj.replace("/", "//"))[0] == 200  # merge_slashes
    assert raw(url, "GET", obj, headers={"If-None-Match": h["etag"]})[0] == 304
    assert raw(url, "GET", obj, headers={"If-Modified-Since": h["last-modified"]})[0] == 304
    for index in ("/releases/_index.json", "/releases/app/_index.json"):
        s, h, _b = raw(url, "GET", index)
        assert (s, h["cache-control"]) == (200, "public, no-cache"), index
    s, h, _b = raw(url, "GET", "/releases/app/000000000001.release")
    assert (s, h["cache-control"]) == (200, "public, max-age=60")
    s, h, _b = raw(url, "GET", "/refs/r1")
    assert (s, h["cache-control"]) == (200, "public, max-age=60")
    s, h, _b = raw(url, "GET", "/casstore.json")
    assert (s, h["cache-control"]) == (200, "public, max-age=3600")
    for hidden in ("/server/tokens.json", "/index/", "/tmp/", "/lock", "/", "/objects/",
                   "/releases/", "/objects/" + object_relpath(root).split("/")[1][:2] + "/"):
        assert raw(url, "GET", hidden)[0] in (403, 404), hidden
    s404, h404, _b = raw(url, "GET", "/objects/00/" + "0" * 62)
    assert s404 == 404 and "immutable" not in h404.get("cache-control", "")
    victim = store / object_relpath(root)
    link = store / "objects" / "zz"
    link.symlink_to(victim.parent)
    try:
        assert raw(url, "GET", f"/objects/zz/{victim.name}")[0] in (403, 404)
    finally:
        link.unlink()

    kit.config.write_text(
        'trusted_keys = ["release.key.pub"]\n'
        f'source = ["{url}"]\n'
        'cache_dir = "cache"\nstate_dir = "state"\n'
        "connect_timeout = 2\nread_timeout = 5\nrequest_timeout = 10\n")
    mp = mounter.mount("app")
    for rel, data in files.items():
        assert (mp / rel).read_bytes() == data
