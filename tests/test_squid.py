"""Squid between client mounts and one origin, with Debian's real squid on
loopback: a second node's objects come from squid, not the origin, and a release
published after the first mounts is seen at once by the next mount through the same
squid (the release index is revalidated, never served stale from the proxy).

The origin is the real ``cas serve`` process (its ``/metrics`` byte counter tells what
it sent) and, as the cheap second case, nginx serving the same folder (its access
log tells)."""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from net_fixtures import NGINX, SQUID, Nginx, Squid

from fuse_fixtures import Kit, Mounter
from serve_helpers import ProcessServer, metric_settled

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (os.path.exists(SQUID) and os.path.exists(NGINX) and os.path.exists("/dev/fuse")
         and shutil.which("setpriv")),
    reason="needs squid, nginx, setpriv and /dev/fuse")]

OBJ_ROUTE = "/objects/{xx}/{rest}"


class Origin:
    """The origin server and how many object bytes / requests it has answered."""

    def __init__(self, url: str, object_bytes: Callable[[], float],
                 object_gets: Callable[[], int]) -> None:
        self.url = url
        self.object_bytes = object_bytes
        self.object_gets = object_gets


@pytest.fixture(params=["cas-serve", "nginx"])
def origin(request, kit: Kit) -> Iterator[Origin]:
    if request.param == "cas-serve":
        with ProcessServer(kit.store.root, kit.base / "serve.log", "--max-age", "60") as srv:
            yield Origin(srv.url,
                         lambda: metric_settled(srv.url, "cas_http_response_body_bytes_total",
                                                route=OBJ_ROUTE),
                         lambda: int(metric_settled(srv.url, "cas_http_requests_total",
                                                    route=OBJ_ROUTE, method="GET")))
    else:
        ng = Nginx(kit.store.root, kit.base / "nginx").start()
        try:
            def gets() -> list[str]:
                return [r for r in ng.requests() if r.startswith("GET ") and "/objects/" in r]
            yield Origin(ng.url, lambda: float(len(gets())), lambda: len(gets()))
        finally:
            ng.stop()


@pytest.fixture
def squid(kit: Kit) -> Iterator[Squid]:
    with Squid(kit.base / "squid", cache_mb=64, max_object_mb=16) as sq:
        yield sq


def tree(kit: Kit, name: str, seed: int) -> tuple[dict[str, bytes], object]:
    """A small release tree: files above and below ``prefetch_min`` (whole-file fetch
    and chunk reads), several objects each."""
    src = kit.base / name
    (src / "lib").mkdir(parents=True)
    rnd = random.Random(seed)
    files = {"lib/a.jl": rnd.randbytes(300_000), "b.bin": rnd.randbytes(700_000),
             "big.bin": rnd.randbytes(2_500_000), "small.txt": f"rev {seed}\n".encode()}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    return files, kit.put(src)


def node(kit: Kit, mounter: Mounter, origin: Origin, squid: Squid, n: int) -> Path:
    """A brand-new node: its own cache and state folders, the origin through squid."""
    cfg = kit.base / f"node{n}.toml"
    cfg.write_text('trusted_keys = ["release.key.pub"]\n'
                   f'source = ["{origin.url}"]\nproxy = "{squid.url}"\n'
                   f'cache_dir = "cache{n}"\nstate_dir = "state{n}"\nprefetch_min = "1M"\n'
                   "connect_timeout = 5\nread_timeout = 20\nrequest_timeout = 60\n")
    kit.config = cfg  # Mounter mounts with the kit's config
    return mounter.mount("app", name=f"node{n}")


def settled(read: Callable[[], float], timeout: float = 30.0) -> float:
    """``read()`` once it has stopped changing for 0.5 s: servers count a request after
    its response is sent, so a counter may trail the client by a moment."""
    last, deadline = read(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = read()
        if now == last:
            return now
        last = now
    raise AssertionError(f"counter never settled (last {last})")


def test_second_node_from_squid_and_index_never_stale(kit: Kit, mounter: Mounter,
                                                      origin: Origin, squid: Squid) -> None:
    files, root = tree(kit, "v1", 1)
    kit.publish("app", 1, root)

    mp1 = node(kit, mounter, origin, squid, 1)
    for rel, data in files.items():
        assert (mp1 / rel).read_bytes() == data
    after1 = settled(origin.object_bytes)
    gets1 = origin.object_gets()
    assert gets1 >= 4 and after1 > 0  # node 1 was cold: the origin sent its objects
    sq1 = squid.access_counts("/objects/")
    assert sq1["misses"] >= 1 and sq1["bytes_from_origin"] > 3_000_000

    mp2 = node(kit, mounter, origin, squid, 2)
    for rel, data in files.items():
        assert (mp2 / rel).read_bytes() == data
    assert settled(origin.object_bytes) == after1  # not one more object byte from the origin
    assert origin.object_gets() == gets1
    sq2 = squid.access_counts("/objects/")
    node2 = {k: sq2[k] - sq1[k] for k in sq2}
    assert node2["requests"] >= 4 and node2["hits"] == node2["requests"], (node2, sq2)
    assert node2["bytes_from_origin"] == 0 and node2["bytes_from_cache"] > 3_000_000

    # A new revision on the origin, well within any short max-age of the index
    # files squid has already seen: the next new node must mount it, not revision 1.
    files2, root2 = tree(kit, "v2", 2)
    kit.publish("app", 2, root2)
    mp3 = node(kit, mounter, origin, squid, 3)
    assert (mp3 / "small.txt").read_bytes() == b"rev 2\n"
    assert (mp3 / "b.bin").read_bytes() == files2["b.bin"]
    idx = [r for r in squid.log_lines() if r[5].endswith("/releases/app/_index.json")]
    codes = [r[1].split("/")[0] for r in idx]
    assert len(idx) >= 3 and codes[0] == "TCP_MISS", codes
    # squid stored it but asked the origin before every later use: unchanged for node
    # 2 (a 304, no body from the origin), changed for node 3
    assert set(codes[1:]) <= {"TCP_REFRESH_UNMODIFIED", "TCP_REFRESH_MODIFIED"}, codes
    assert "TCP_REFRESH_UNMODIFIED" in codes and codes[-1] == "TCP_REFRESH_MODIFIED", codes
