"""Client metrics (Prometheus text) and daemon logs.

Model tests need no FUSE: the text format is checked with a strict parser of the
0.0.4 exposition rules written here, and the object cache's counters against a
scripted sequence of reads.  The mount tests read the ``.prom`` file a real daemon
writes, a unix-socket scrape, and the lines a syslog socket receives.
"""

from __future__ import annotations

import errno
import gc
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from metrics_helpers import (
    TEXT_FORMAT,
    NodeExporter,
    check_exposition,
    needs_node_exporter,
    needs_promtool,
    parse,
    value,
    values,
)
from net_fixtures import NGINX, Nginx, free_port
from prometheus_client.parser import text_string_to_metric_families

from casstore.client import config as client_config
from casstore.client.exporters import (
    Exporters,
    SocketExporter,
    TextfileExporter,
    mount_id,
    prune_textfiles,
    textfile_path,
)
from casstore.client.metrics import ClientMetrics
from casstore.errors import ObjectCorrupt, ObjectMissing, UsageError
from casstore.format.layout import object_path
from casstore.format.objects import ObjectId, ObjType
from casstore.sources import LocalSource, ObjectCache
from casstore.sources.counters import ShardedCounters
from casstore.sources.knownbad import KnownBad
from casstore.store.writable import Store
from casstore.view.reader import TreeReader, root_entry

from fuse_fixtures import CAS, Kit, Mounter, run_cas


def put_objects(store: Store, sizes: list[int], seed: int = 1) -> list[ObjectId]:
    rnd = random.Random(seed)
    return [store.put_raw(ObjType.CHUNK, rnd.randbytes(n)) for n in sizes]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store", create=True)
    yield s
    s.close()


# -- the model -------------------------------------------------------------------------
def test_render_passes_promtool_with_mount_labels_on_every_series(store: Store) -> None:
    mountpoint, release = '/mnt/we"ird\\path\nx', "app"
    oids = put_objects(store, [3000, 5000])
    src = LocalSource(store.root)
    for o in oids:
        src.fetch(o)
    m = ClientMetrics(mountpoint, release, 7, source=KnownBad(src), mount_ns="4026531999")
    m.attach(fuse_errors=lambda: {"eio": 3, "corrupt": 2, "known_bad": 1},
             file_cache=lambda: {"hits": 5, "bytes": 10}, prefetch=lambda: {"done": 4,
                                                                           "total": 9})
    text = m.render()
    samples = check_exposition(text)
    assert samples and all(("mountpoint", mountpoint) in ls and ("release", release) in ls
                           and ("mount_ns", "4026531999") in ls for (_n, ls) in samples)
    stored = sum(len(src.read_stored(o)) for o in oids)  # two more reads: render again
    samples = check_exposition(m.render())
    folder = str(store.root)
    assert value(samples, "cas_client_source_fetched_objects_total", source=folder) == 4
    assert value(samples, "cas_client_source_fetched_bytes_total", source=folder) == 2 * stored
    assert value(samples, "cas_client_revision") == 7
    assert value(samples, "cas_client_eio_total") == 3
    assert value(samples, "cas_client_fuse_errors_total", kind="known_bad") == 1
    assert value(samples, "cas_client_prefetch_objects_done") == 4
    assert value(samples, "cas_client_prefetch_objects_listed") == 9
    assert value(samples, "cas_client_file_cache_hits_total") == 5
    assert abs(value(samples, "cas_client_last_check_success_time_seconds") - time.time()) < 60
    m.set_revision(8)
    m.check_succeeded(1234.5)
    samples = check_exposition(m.render())
    assert value(samples, "cas_client_revision") == 8
    assert value(samples, "cas_client_last_check_success_time_seconds") == 1234.5
    # and prometheus_client's own parser reads the same numbers back
    fams = {f.name: f for f in text_string_to_metric_families(m.render())}
    assert fams["cas_client_revision"].samples[0].labels["mountpoint"] == mountpoint


def test_build_and_process_metrics_carry_the_mount_labels() -> None:
    """build_info names the installed version; the process series are this process's
    and prefixed, so node_exporter's own process_* never clash with them."""
    from importlib.metadata import version

    m = ClientMetrics("/depot", "app", 1, mount_ns="77")
    before = time.time()
    samples = check_exposition(m.render())
    info = values(samples, "cas_client_build_info")
    assert len(info) == 1 and info[0][1] == 1
    assert info[0][0]["version"] == version("casstore") and info[0][0]["mount_ns"] == "77"
    assert info[0][0]["python"].count(".") == 2
    rss = value(samples, "cas_client_process_resident_memory_bytes", mountpoint="/depot")
    own = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert 0.5 * own < rss < 2 * own
    start = value(samples, "cas_client_process_start_time_seconds")
    assert start <= before and before - start < 24 * 3600
    assert value(samples, "cas_client_process_open_fds") >= 3
    assert value(samples, "cas_client_process_cpu_seconds_total") > 0
    assert not [n for (n, _ls) in samples if n.startswith("process_")]


@needs_promtool
def test_promtool_rejects_what_the_client_used_to_serve() -> None:
    """The check is real: gauges named ``*_total`` (the old prefetch totals) fail it."""
    from metrics_helpers import promtool_check

    bad = ("# HELP cas_client_prefetch_objects_total x\n"
           "# TYPE cas_client_prefetch_objects_total gauge\n"
           "cas_client_prefetch_objects_total 3\n")
    with pytest.raises(AssertionError, match="rc 3"):
        promtool_check(bad)


def test_object_cache_counters_exact_for_a_scripted_sequence(store: Store,
                                                             tmp_path: Path) -> None:
    """Three objects of one size, a quota for two and a half: LRU evicts exactly as
    scripted; source counters see only the misses."""
    a, b, c = put_objects(store, [20_000] * 3)
    size = len(store.read_stored(a))
    assert {len(store.read_stored(o)) for o in (a, b, c)} == {size}
    src = LocalSource(store.root)
    cache = ObjectCache(src, tmp_path / "objects", int(size * 2.5))
    m = ClientMetrics("/depot", "app", 1, source=KnownBad(cache))
    script = [(a, "miss"), (a, "hit"), (b, "miss"), (a, "hit"),
              (c, "miss"),   # 3 objects: evicts b, the least recently used
              (b, "miss"),   # evicts a (c was stored after a's last hit)
              (c, "hit"),
              (a, "miss")]   # evicts b
    for oid, _what in script:
        cache.fetch(oid)
    samples = check_exposition(m.render())
    misses = sum(1 for _o, w in script if w == "miss")
    assert value(samples, "cas_client_object_cache_hits_total") == len(script) - misses == 3
    assert value(samples, "cas_client_object_cache_misses_total") == misses
    assert value(samples, "cas_client_object_cache_evictions_total") == 3
    assert sorted(p.name for p in (tmp_path / "objects").iterdir()) == sorted([a.hex, c.hex])
    assert value(samples, "cas_client_object_cache_bytes") == 2 * size
    folder = str(store.root)
    assert value(samples, "cas_client_source_fetched_objects_total", source=folder) == misses
    assert value(samples, "cas_client_source_fetched_bytes_total", source=folder) == misses * size
    # a missing and a corrupt object, read straight from the folder
    gone, bad = put_objects(store, [100, 200], seed=2)
    object_path(store.root, gone).unlink()
    path = object_path(store.root, bad)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ObjectMissing):
        cache.fetch(gone)
    with pytest.raises(ObjectCorrupt):
        src.fetch(bad)
    samples = check_exposition(m.render())
    assert value(samples, "cas_client_source_errors_total", source=folder, kind="missing") == 1
    assert value(samples, "cas_client_source_errors_total", source=folder, kind="corrupt") == 1
    cache.close()


def test_sharded_counters_lose_nothing_and_fold_finished_threads() -> None:
    c = ShardedCounters(2)

    def work() -> None:
        for _ in range(20_000):
            c.add(0)
            c.add(1, 3)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gc.collect()
    assert c.values() == [160_000, 480_000]
    assert len(c._rows) == 0  # every finished thread's row was folded into the total
    c.add(0, 5)
    assert c.values() == [160_005, 480_000]


def test_config_keys(tmp_path: Path) -> None:
    cfg = client_config.from_dict({}, tmp_path / "c.toml")
    assert cfg.metrics_textfile_dir is None and cfg.metrics_socket is None
    assert cfg.log == "syslog" and cfg.syslog_address == Path("/dev/log")
    cfg = client_config.from_dict({"metrics_textfile_dir": "prom", "metrics_socket":
                                   "/run/m-{id}.sock", "metrics_interval": 0.5,
                                   "log": "logs/mount.log", "syslog_address": "dev-log"},
                                  tmp_path / "c.toml")
    assert cfg.metrics_textfile_dir == tmp_path / "prom"
    assert cfg.metrics_socket == Path("/run/m-{id}.sock") and cfg.metrics_interval == 0.5
    assert cfg.log == tmp_path / "logs/mount.log" and cfg.syslog_address == tmp_path / "dev-log"
    assert client_config.from_dict({"log": "file"}).log == "file"
    for bad in ({"metrics_interval": 0}, {"metrics_interval": 1000}, {"metrics_interval": "5"},
                {"log": ""}, {"metrics_textfile_dir": 3}, {"syslog_address": []}):
        with pytest.raises(UsageError):
            client_config.from_dict(bad)


def test_textfile_is_atomic_final_and_pruned(tmp_path: Path) -> None:
    m = ClientMetrics("/depot", "app", 2)
    mid = mount_id("/de pot/x", "4026531840")
    assert mid == "de_pot_x-4026531840"
    exp = TextfileExporter(m, tmp_path, mid, interval=0.05)
    exp.start()
    seen: set[str] = set()
    deadline = time.monotonic() + 10
    writes = 0
    while writes < 20 and time.monotonic() < deadline:  # read while it rewrites
        seen.update(os.listdir(tmp_path))
        text = exp.path.read_text()
        assert text.startswith(f"# casstore client pid {os.getpid()}\n")
        assert value(check_exposition(text), "cas_client_mounted") == 1
        writes += 1
    exp.stop()
    assert value(check_exposition(exp.path.read_text()), "cas_client_mounted") == 0
    assert exp.path == textfile_path(tmp_path, mid) and exp.path.name.endswith(".prom")
    assert [n for n in seen if n.endswith(".prom")] == [exp.path.name]  # temps are not .prom
    # a dead daemon's old file is pruned; a fresh one, or a live pid's, is kept
    dead = tmp_path / "casstore_old-1.prom"
    dead.write_text("# casstore client pid 999999999\n")
    live = tmp_path / "casstore_live-1.prom"
    live.write_text(f"# casstore client pid {os.getpid()}\n")
    old = time.time() - 3600
    for p in (dead, live):
        os.utime(p, (old, old))
    prune_textfiles(tmp_path)
    assert not dead.exists() and live.exists() and exp.path.exists()


def _short_dir() -> Path:
    """A unix socket path must fit in 108 bytes: pytest's tmp_path may not."""
    return Path(tempfile.mkdtemp(prefix="casm-", dir="/tmp"))


def http_over_unix(path: Path, target: str = "/metrics", method: str = "GET"
                   ) -> tuple[int, str]:
    status, head, body = http_raw(path, target, method)
    assert status != 200 or f"content-type: {TEXT_FORMAT}" in head
    return status, body


def http_raw(path: Path, target: str = "/metrics", method: str = "GET"
             ) -> tuple[int, str, str]:
    """(status, lower-cased header block, body) of one HTTP/1.0 request on a unix socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(f"{method} {target} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head.decode().lower(), body.decode()


def test_socket_exporter_serves_and_refuses_a_taken_path() -> None:
    d = _short_dir()
    try:
        m = ClientMetrics("/depot", "app", 4)
        ex = Exporters(m, None, d / "m-{id}.sock", "depot-1")
        assert ex.describe() == {"socket": str(d / "m-depot-1.sock")}
        path = d / "m-depot-1.sock"
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(path))  # a socket file nobody listens on: a dead daemon's
        stale.close()
        ex.start()
        status, body = http_over_unix(path)
        assert status == 200 and value(check_exposition(body), "cas_client_revision") == 4
        assert http_over_unix(path, "/other")[0] == 404
        # HEAD: the GET's headers, no body; other methods: 405 in one plain line
        status, head, body = http_raw(path, "/metrics", "HEAD")
        length = int(re.search(r"content-length: (\d+)", head).group(1))
        assert status == 200 and body == "" and f"content-type: {TEXT_FORMAT}" in head
        assert abs(length - len(http_over_unix(path)[1].encode())) < 200  # numbers move
        status, head, body = http_raw(path, "/metrics", "POST")
        assert status == 405 and "allow: get, head" in head and body == "405 only GET and HEAD\n"
        status, head, body = http_raw(path, "/metrics", "BREW")
        assert status == 501 and "text/plain" in head and "<html" not in body.lower()
        second = SocketExporter(m, path)
        assert not second.start()  # a live socket is never taken over
        ex.stop()
        assert not path.exists()
        (d / "plain").write_text("x")
        assert not SocketExporter(m, d / "plain").start()  # not a socket: left alone
        assert (d / "plain").read_text() == "x"
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- node_exporter's textfile collector ---------------------------------------------
def _node_samples(ne: NodeExporter) -> dict:
    return parse(ne.scrape())


@needs_node_exporter
def test_node_exporter_keeps_apart_mounts_that_differ_only_in_namespace(
        tmp_path: Path) -> None:
    """Two files of one mount point and release: with one namespace label each,
    node_exporter serves both series and logs nothing; forced to one namespace (the
    labels every job had before), it logs "collected before" and serves one of them,
    which is what this check must notice."""
    folder, clash = tmp_path / "prom", tmp_path / "clash"
    folder.mkdir()
    clash.mkdir()
    for ns, rev in (("4026532001", 5), ("4026532002", 6)):
        assert TextfileExporter(ClientMetrics("/depot", "app", rev, mount_ns=ns), folder,
                                mount_id("/depot", ns)).write()
    with NodeExporter(folder, tmp_path / "ne.log") as ne:
        samples = _node_samples(ne)
        revs = {ls["mount_ns"]: v for ls, v in values(samples, "cas_client_revision")}
        assert revs == {"4026532001": 5, "4026532002": 6}
        assert value(samples, "node_textfile_scrape_error") == 0
        assert "collected before" not in ne.log
    for mid, rev in (("depot-a", 5), ("depot-b", 6)):
        assert TextfileExporter(ClientMetrics("/depot", "app", rev, mount_ns="same"), clash,
                                mid).write()
    with NodeExporter(clash, tmp_path / "ne2.log") as ne:
        samples = _node_samples(ne)
        assert len(values(samples, "cas_client_revision")) == 1
        deadline = time.monotonic() + 30
        while "collected before" not in ne.log and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "collected before with the same name and label values" in ne.log


@pytest.mark.slow
@pytest.mark.fuse
@needs_promtool
@needs_node_exporter
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="cas exec needs root and unshare(1)")
def test_two_cas_exec_jobs_on_one_node_each_have_their_own_series(kit: Kit,
                                                                   tmp_path: Path) -> None:
    """Two real ``cas exec`` jobs, same config, release and mount point, running at
    once: node_exporter over the shared textfile folder shows both jobs' series (one
    per mount namespace), each passes promtool, and it logs no duplicate."""
    src = kit.base / "src"
    src.mkdir()
    (src / "data.bin").write_bytes(random.Random(3).randbytes(300_000))
    kit.publish("app", 1, kit.put(src))
    _config(kit, '"store"', 'log = "file"\n')
    folder, mp = kit.base / "prom", kit.base / "depot"
    mp.mkdir()
    go = kit.base / "go"
    procs = []
    for job in ("a", "b"):
        ready = kit.base / f"ready-{job}"
        script = (f'cat "{mp}/data.bin" > /dev/null && touch "{ready}"; '
                  f'for i in $(seq 600); do [ -e "{go}" ] && exit 0; sleep 0.1; done; exit 9')
        procs.append(subprocess.Popen(
            [*CAS, "exec", "--config", str(kit.config), "--mountpoint", str(mp), "app", "--",
             "sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, env={k: v for k, v in os.environ.items()
                                         if k != "CAS_DEBUG"}))
    try:
        wait_for(lambda: all((kit.base / f"ready-{j}").exists() for j in "ab")
                 or any(p.poll() is not None for p in procs), bool,
                 "both jobs to have read the file (or one to end)", timeout=120)
        assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs]
        files = wait_for(lambda: sorted(folder.glob("casstore_*.prom")),
                         lambda f: len(f) == 2, "two metrics files")
        for f in files:
            check_exposition(f.read_text())
        with NodeExporter(folder, tmp_path / "ne.log") as ne:
            samples = wait_for(lambda: _node_samples(ne), lambda s: all(
                v >= 300_000 for _l, v in values(s, "cas_client_source_fetched_bytes_total"))
                and len(values(s, "cas_client_source_fetched_bytes_total")) == 2,
                "both jobs' bytes in node_exporter")
            mounted = values(samples, "cas_client_mounted")
            assert len(mounted) == 2 and all(v == 1 for _l, v in mounted)
            assert {ls["mountpoint"] for ls, _v in mounted} == {str(mp)}
            assert len({ls["mount_ns"] for ls, _v in mounted}) == 2
            assert len(values(samples, "cas_client_process_resident_memory_bytes")) == 2
            assert value(samples, "node_textfile_scrape_error") == 0
            assert "collected before" not in ne.log, ne.log[-2000:]
        go.touch()
        codes = [p.wait(120) for p in procs]
        assert codes == [0, 0], [p.stderr.read() for p in procs]
    finally:
        go.touch()
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
    assert not any(line.split()[1] == str(mp) for line in
                   Path("/proc/mounts").read_text().splitlines())


# -- real mounts -----------------------------------------------------------------------
def wait_for(get: Callable[[], object], ok: Callable[[object], bool], what: str,
             timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = get()
            if ok(last):
                return last
        except (OSError, AssertionError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def prom(folder: Path, mp: Path | None = None) -> dict:
    """The samples of the one metrics file (of mount point ``mp``) in ``folder``."""
    files = list(folder.glob("casstore_*.prom"))
    if mp is not None:
        files = [f for f in files if f.name.startswith(f"casstore_{mount_id(str(mp), '')}")]
    assert len(files) == 1, files
    return check_exposition(files[0].read_text())


def _config(kit: Kit, source: str, extra: str) -> None:
    kit.config.write_text(f'trusted_keys = ["release.key.pub"]\nsource = {source}\n'
                          'cache_dir = "cache"\nstate_dir = "state"\nprefetch_min = "1M"\n'
                          'metrics_textfile_dir = "prom"\nmetrics_interval = 0.2\n' + extra)


@pytest.mark.slow
@pytest.mark.fuse
def test_mount_writes_metrics_and_logs_with_the_mountpoint(kit: Kit, mounter: Mounter) -> None:
    rnd = random.Random(12)
    src = kit.base / "src"
    src.mkdir()
    files = {"big.bin": rnd.randbytes(1_500_000), "mid.bin": rnd.randbytes(300_000),
             "small.txt": b"hello\n", "victim.bin": rnd.randbytes(200_000)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    root = kit.put(src)
    kit.publish("app", 3, root)
    sock_dir = _short_dir()
    try:
        _config(kit, '"store"', f'log = "file"\nmetrics_socket = "{sock_dir}/m-{{id}}.sock"\n')
        reader = TreeReader(kit.store)
        victim = reader.file_chunk_ids(reader.lookup(root_entry(root), "victim.bin"))[0]
        path = object_path(kit.store.root, victim)
        os.chmod(path, 0o644)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x40
        path.write_bytes(bytes(data))

        mp = mounter.mount("app")
        folder, store = kit.base / "prom", str(kit.store.root.resolve())
        samples = wait_for(lambda: prom(folder), lambda s: True, "a metrics file")
        assert value(samples, "cas_client_revision", mountpoint=str(mp), release="app") == 3
        assert value(samples, "cas_client_mounted") == 1
        for name in ("big.bin", "mid.bin", "small.txt"):
            assert (mp / name).read_bytes() == files[name]
        samples = wait_for(lambda: prom(folder), lambda s: value(
            s, "cas_client_source_fetched_bytes_total", source=store) > 1_500_000,
            "bytes fetched from the store folder")
        assert value(samples, "cas_client_source_fetched_objects_total", source=store) >= 3
        assert value(samples, "cas_client_eio_total") == 0
        with pytest.raises(OSError) as info:
            (mp / "victim.bin").read_bytes()
        assert info.value.errno == errno.EIO
        samples = wait_for(lambda: prom(folder),
                           lambda s: value(s, "cas_client_eio_total") >= 1, "EIO counted")
        assert value(samples, "cas_client_source_errors_total", source=store,
                     kind="corrupt") >= 1
        assert value(samples, "cas_client_fuse_errors_total", kind="corrupt") >= 1
        sock = next(sock_dir.glob("m-*.sock"))  # the {id} is the mount id
        status, body = http_over_unix(sock)
        assert status == 200
        assert value(check_exposition(body), "cas_client_eio_total") >= 1

        st = run_cas("--json", "status", "--config", str(kit.config), str(mp))
        assert '"textfile"' in st.stdout and '"log"' in st.stdout
        res = run_cas("umount", "--config", str(kit.config), str(mp))
        assert res.returncode == 0, res.stderr
        samples = wait_for(lambda: prom(folder),
                           lambda s: value(s, "cas_client_mounted") == 0, "the final write")
        assert value(samples, "cas_client_eio_total") >= 1
        assert not sock.exists()
        logs = list((kit.base / "state" / "mounts").glob("*.log"))
        lines = logs[0].read_text().splitlines()
        assert len(logs) == 1 and len(lines) >= 3
        assert all(f"[{mp}]" in line for line in lines), lines
        assert any(str(victim) in line for line in lines)  # the EIO's ERROR line
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.fuse
@pytest.mark.skipif(not os.path.exists(NGINX), reason="needs nginx")
def test_http_mount_counts_bytes_per_url_and_cache_hits_on_remount(kit: Kit,
                                                                   mounter: Mounter,
                                                                   request) -> None:
    rnd = random.Random(4)
    src = kit.base / "src"
    src.mkdir()
    files = {"a.bin": rnd.randbytes(600_000), "b.bin": rnd.randbytes(1_200_000),
             "c.txt": b"small\n"}
    for name, data in files.items():
        (src / name).write_bytes(data)
    kit.publish("app", 1, kit.put(src))
    nginx = Nginx(kit.store.root, kit.base / "nginx").start()
    request.addfinalizer(nginx.stop)
    dead = f"http://127.0.0.1:{free_port()}/store"  # nothing listens: refused
    _config(kit, f'["{dead}", "{nginx.url}"]',
            "connect_timeout = 2\nread_timeout = 2\nrequest_timeout = 5\n")
    folder = kit.base / "prom"

    mp = mounter.mount("app", name="first")
    for name, data in files.items():
        assert (mp / name).read_bytes() == data
    samples = wait_for(lambda: prom(folder), lambda s: value(
        s, "cas_client_source_fetched_bytes_total", source=nginx.url) > 1_800_000,
        "bytes fetched from the nginx URL")
    misses = value(samples, "cas_client_object_cache_misses_total")
    assert misses >= 3
    assert value(samples, "cas_client_source_fetched_objects_total", source=nginx.url) >= 3
    assert value(samples, "cas_client_source_fetched_bytes_total", source=dead) == 0
    assert value(samples, "cas_client_source_failovers_total", source=dead) >= 1
    assert value(samples, "cas_client_source_errors_total", source=dead, kind="temporary") >= 1
    assert value(samples, "cas_client_source_failovers_total", source=nginx.url) == 0
    assert run_cas("umount", "--config", str(kit.config), str(mp)).returncode == 0

    mp = mounter.mount("app", name="second")  # a fresh mount over the same cache folder
    for name, data in files.items():
        assert (mp / name).read_bytes() == data
    samples = wait_for(lambda: prom(folder, mp), lambda s: value(
        s, "cas_client_mounted") == 1 and value(s, "cas_client_object_cache_hits_total") >= 3,
        "object cache hits in the second mount")
    assert value(samples, "cas_client_source_fetched_bytes_total", source=nginx.url) == 0
    assert value(samples, "cas_client_object_cache_misses_total") == 0


class SyslogReceiver:
    """A unix datagram socket standing in for /dev/log; collects what arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.lines: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.lines.append(self.sock.recv(65536).decode("utf-8", "replace"))
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.mark.slow
@pytest.mark.fuse
def test_logs_go_to_syslog_with_the_mountpoint_on_every_line(kit: Kit,
                                                             mounter: Mounter) -> None:
    src = kit.base / "src"
    src.mkdir()
    (src / "ok.txt").write_bytes(b"fine\n")
    (src / "gone.bin").write_bytes(random.Random(1).randbytes(100_000))
    root = kit.put(src)
    kit.publish("app", 1, root)
    reader = TreeReader(kit.store)
    gone = reader.file_chunk_ids(reader.lookup(root_entry(root), "gone.bin"))[0]
    object_path(kit.store.root, gone).unlink()
    d = _short_dir()
    rx = SyslogReceiver(d / "log")
    try:
        _config(kit, '"store"', f'log = "syslog"\nsyslog_address = "{d}/log"\n')
        mp = mounter.mount("app")
        assert (mp / "ok.txt").read_bytes() == b"fine\n"
        with pytest.raises(OSError):
            (mp / "gone.bin").read_bytes()
        wait_for(lambda: list(rx.lines), lambda ls: any(str(gone) in x for x in ls),
                 "the EIO's line at the syslog socket")
        assert run_cas("umount", "--config", str(kit.config), str(mp)).returncode == 0
        wait_for(lambda: list(rx.lines), lambda ls: any("unmounted" in x for x in ls),
                 "the unmount line")
        pid = mounter.procs[-1][0].pid
        assert len(rx.lines) >= 3
        for line in rx.lines:
            assert re.match(rf"<\d+>casstore-mount\[{pid}\]: \[{re.escape(str(mp))}\] ", line), line
        assert any("ERROR" in x and str(gone) in x for x in rx.lines)
        # nothing went to the file log (syslog worked)
        assert not list((kit.base / "state" / "mounts").glob("*.log"))
    finally:
        rx.close()
        shutil.rmtree(d, ignore_errors=True)


def test_syslog_falls_back_to_the_file_without_a_socket(tmp_path: Path) -> None:
    import logging

    from casstore.client.fuse.daemonlog import setup_logging

    cfg = client_config.from_dict({"syslog_address": str(tmp_path / "nothing")},
                                  tmp_path / "c.toml")
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        where = setup_logging(cfg, Path("/mnt/x"), tmp_path / "m.log", foreground=False)
        logging.getLogger("casstore.test").warning("two\nlines")
        for h in root.handlers:
            h.flush()
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    assert where == str(tmp_path / "m.log")
    lines = (tmp_path / "m.log").read_text().splitlines()
    assert any("no syslog socket" in x for x in lines)
    assert len(lines) == 3 and all("[/mnt/x]" in x for x in lines), lines
