"""cas serve against hostile clients, the real process on loopback: parser-rejected
requests answered in one line and counted, deep JSON, idle and dribbling
connections, connection caps, a dead worker replaced, SIGTERM while a client
stalls, nginx's caching semantics (conditional requests, merged slashes) and
``promtool check metrics`` on ``/metrics``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from casstore.format.layout import object_relpath
from casstore.format.objects import ObjType
from casstore.store.writable import Store

from serve_helpers import ProcessServer, metric, new_store, raw, token_for


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """A store with a small and a 1.5 MB object, and a write token."""
    root = new_store(tmp_path_factory.mktemp("hard") / "store")
    s = Store.open(root)
    with s.lock():
        small = s.put_raw(ObjType.CHUNK, os.urandom(20_000))
        big = s.put_raw(ObjType.CHUNK, os.urandom(1_500_000))
    s.close()
    return {"root": root, "small": "/" + object_relpath(small), "big": "/" + object_relpath(big),
            "token": token_for(root)}


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send ``data`` on a new connection, read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


HOSTILE = [
    b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(2000)) + b"\r\n",
    bytes.fromhex("16030100a5010000a10303") + os.urandom(64),
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nSECRET-BODY-TEXT",
]


def test_rejected_requests_one_line_counted_promtool(store: dict, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with ProcessServer(store["root"], log, "--workers", "1") as srv:
        port = port_of(srv.url)
        answers = [exchange(port, req) for req in HOSTILE]
        deep = b"[" * 100_000
        auth = {"Authorization": f"Bearer {store['token']}"}
        s_missing = raw(srv.url, "POST", "/objects/missing", b'{"ids": ' + deep + b"}", auth)[0]
        s_release = raw(srv.url, "PUT", "/releases/app/000000000001.release", deep, auth)[0]
        rejected = metric(srv.url, "cas_http_requests_total", route="rejected")
        _s, headers, body = raw(srv.url, "GET", "/metrics")
    assert srv.proc.returncode == 0
    statuses = [a.split(b" ", 2)[1] for a in answers[:4]]
    assert statuses == [b"400"] * 4
    assert b"SECRET-BODY-TEXT" not in answers[4] and b"x" * 100 not in answers[1]
    assert (s_missing, s_release) == (400, 403)  # no trusted key: release PUT is off
    assert rejected >= 4  # the TLS bytes may be one or two parse errors
    text = log.read_text()
    assert "Traceback" not in text and "SECRET-BODY-TEXT" not in text
    assert "version=0.0.4" in headers["content-type"]
    (tmp_path / "m.txt").write_bytes(body)
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian's prometheus) is not installed")
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_deep_release_json_is_400_with_trusted_key(store: dict, tmp_path: Path) -> None:
    import nacl.signing
    key = nacl.signing.SigningKey.generate().verify_key.encode().hex()
    with ProcessServer(store["root"], tmp_path / "log", "--workers", "1",
                       "--trusted-key", key, "--cache", str(tmp_path / "c")) as srv:
        s = raw(srv.url, "PUT", "/releases/app/000000000001.release", b"[" * 100_000,
                {"Authorization": f"Bearer {store['token']}"})[0]
    assert s == 400
    assert "Traceback" not in (tmp_path / "log").read_text()


def test_caching_semantics_as_nginx(store: dict, tmp_path: Path) -> None:
    with ProcessServer(store["root"], tmp_path / "log", "--workers", "1") as srv:
        s, h, body = raw(srv.url, "GET", store["small"])
        assert s == 200 and "last-modified" in h and h["etag"].startswith('"b3-')
        assert raw(srv.url, "GET", store["small"], headers={
            "If-Modified-Since": h["last-modified"]})[0] == 304
        past = formatdate(time.time() - 10 * 86400 * 365, usegmt=True)
        assert raw(srv.url, "GET", store["small"], headers={"If-Modified-Since": past})[0] == 200
        # If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2)
        assert raw(srv.url, "GET", store["small"], headers={
            "If-None-Match": '"other"', "If-Modified-Since": h["last-modified"]})[0] == 200
        s2, _h, body2 = raw(srv.url, "GET", "/" + store["small"].replace("/", "//"))
        assert (s2, body2) == (200, body)
        assert metric(srv.url, "cas_http_requests_total", route="/objects/{xx}/{rest}",
                      status="200") == 4
        s3, h3, _b = raw(srv.url, "GET", "//casstore.json")
        assert s3 == 200 and raw(srv.url, "GET", "/casstore.json", headers={
            "If-Modified-Since": h3["last-modified"]})[0] == 304
        assert raw(srv.url, "GET", "//objects//zz")[0] == 404


def _attacker(port: int, source: str, count: int, dribble: bool) -> subprocess.Popen:
    """A child process holding ``count`` connections from ``source`` until its stdin
    closes; dribbling ones send a header byte every second."""
    code = f"""
import resource, socket, sys, time, select
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
socks = []
for i in range({count}):
    s = socket.socket()
    s.bind(({source!r}, 0))
    s.setblocking(False)
    try:
        s.connect_ex(("127.0.0.1", {port}))
    except OSError:
        s.close()
        continue
    socks.append(s)
print("open", len(socks), flush=True)
while not select.select([sys.stdin], [], [], 1.0)[0]:
    for s in socks:
        try:
            s.send(b"GET /healthz HTTP/1.1\\r\\nX: " if {dribble} else b"")
        except OSError:
            pass
"""
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def test_healthz_answers_under_20000_idle_and_dribbling(store: dict, tmp_path: Path) -> None:
    with ProcessServer(store["root"], tmp_path / "log", "--workers", "1",
                       "--idle-timeout", "3") as srv:
        port = port_of(srv.url)
        attackers = [_attacker(port, "127.0.0.2", 10_000, False),
                     _attacker(port, "127.0.0.3", 10_000, True)]
        try:
            for a in attackers:
                assert a.stdout is not None and a.stdout.readline().startswith("open")
            worst = 0.0
            for _ in range(10):
                t = time.monotonic()
                assert raw(srv.url, "GET", "/healthz")[0] == 200
                worst = max(worst, time.monotonic() - t)
                time.sleep(0.2)
            refused = metric(srv.url, "cas_http_connections_refused_total", reason="client")
            # a silent connection is closed after the idle timeout, a dribbling one
            # (headers never complete) too
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
                t = time.monotonic()
                while s.recv(100):
                    pass
                held = time.monotonic() - t
        finally:
            for a in attackers:
                a.stdin.close()  # type: ignore[union-attr]
                a.wait(60)
                a.stdout.close()  # type: ignore[union-attr]
    assert worst < 1.0, f"/healthz took {worst:.2f} s"
    assert refused > 0
    assert 2 < held < 10


def _children(pid: int) -> list[int]:
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _wait(cond, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_dead_worker_is_replaced_and_sigterm_is_quick(store: dict, tmp_path: Path) -> None:
    srv = ProcessServer(store["root"], tmp_path / "log", "--workers", "2")
    with srv:
        assert _wait(lambda: len(_children(srv.proc.pid)) == 2)
        first = _children(srv.proc.pid)
        os.kill(first[0], signal.SIGKILL)  # a worker this test's server started
        assert _wait(lambda: len(set(_children(srv.proc.pid)) - set(first)) == 1)
        assert srv.proc.poll() is None
        for _ in range(6):
            assert raw(srv.url, "GET", store["small"])[0] == 200
        # a client that asked for a big object and reads nothing must not hold SIGTERM
        stall = socket.create_connection(("127.0.0.1", port_of(srv.url)))
        stall.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for _ in range(20):
            stall.sendall(f"GET {store['big']} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.5)
        t = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(30)
        took = time.monotonic() - t
        stall.close()
    assert srv.proc.returncode == 0 and took < 5.5, took
    assert "starting another" in (tmp_path / "log").read_text()
