"""cas serve: Julia's Pkg protocol from store trees, checked against real Julia 1.5.3."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web
from pkg_helpers import (
    BUNDLES,
    GENERAL_UUID,
    PACKAGES_TOML,
    julia,
    make_artifact,
    manifest_versions,
    packages,
    tiny_release,
    unreachable_repo_urls,
)

from casstore.format.layout import object_path
from casstore.format.objects import ObjectId, ObjType
from casstore.format.trees import Kind, encode_tree
from casstore.pkg.content import RegistryContent, dir_entry, encode_map, read_package_map
from casstore.pkg.gittree import folder_tree_hash
from casstore.releases.release import load_secret, verify
from casstore.server.app import make_app
from casstore.server.pkgproto import PKG, PkgConfig
from casstore.store.publish import publish
from casstore.store.snapshot import Snapshot
from casstore.store.writable import Store
from casstore.view.reader import TreeReader, root_entry

import serve_helpers
from helpers import cas

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not PACKAGES_TOML.exists(), reason="shared bundles missing")]
HELD_BACK = "LorentzVectors"  # registered only in the second revision


# -- servers ---------------------------------------------------------------------------
class ThreadServer(serve_helpers.ThreadServer):
    """The Pkg-protocol app on 127.0.0.1, port 0, in a thread of the test process."""

    def _build(self) -> tuple[web.Application, web.AppRunner]:
        app = make_app(self.cfg)
        return app, web.AppRunner(app)


class ProcessServer(serve_helpers.ProcessServer):
    """The real ``cas serve`` with the Pkg protocol (a trusted key and a tarball cache)."""

    def __init__(self, store: Path, pub: Path, cache: Path, log: Path) -> None:
        super().__init__(store, log, "--trusted-key", str(pub), "--cache", str(cache))


def http(url: str, method: str = "GET") -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def unpack_hash(tarball: bytes, dest: Path) -> str:
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as t:
        t.extractall(dest, filter="tar")
    return folder_tree_hash(dest)


# -- the store ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """registry-General revision 1: every bundle but one, Tiny 0.1.0 and its artifact."""
    tmp = tmp_path_factory.mktemp("pkgsrv")
    store = tmp / "store"
    cas(None, "keygen", str(tmp / "k"), check=True)
    art = make_artifact(tmp / "artifact")
    art_sha1 = folder_tree_hash(art)
    tiny = tmp / "Tiny"
    tiny_release(tiny, "0.1.0", art_sha1)
    bundles = [str(b) for b in sorted(BUNDLES.glob("*.bundle")) if b.stem != HELD_BACK]
    urls = unreachable_repo_urls(tmp / "urls.toml")
    out = json.loads(cas(store, "--json", "registry", "build", *bundles, str(tiny),
                         "--artifact", str(art), "--key", str(tmp / "k"), "--repo-urls",
                         str(urls), check=True).out)
    assert out["revision"] == 1
    return {"tmp": tmp, "store": store, "key": tmp / "k", "pub": tmp / "k.pub",
            "art_sha1": art_sha1, "tiny": tiny, "out": out, "urls": urls}


def copy_store(built: dict, dest: Path) -> Path:
    shutil.copytree(built["store"], dest / "store", symlinks=True,
                    ignore=shutil.ignore_patterns("lock"))
    (dest / "store" / "lock").touch()
    return dest / "store"


def cfg(built: dict, store: Path, cache: Path, **kw) -> PkgConfig:
    pub = built["pub"].read_text().split()[1]
    return PkgConfig(store, [pub], cache, **kw)


def content(store: Path, built: dict, name: str = "registry-General") -> RegistryContent:
    s = Store.open(store)
    revs = s.release_revisions(name)
    rel = verify(s.read_release(name, revs[-1]), [built["pub"].read_text().split()[1]])
    return RegistryContent.from_release(rel, TreeReader(s))


DF = packages()["DataFrames"]


# -- HTTP, no Julia --------------------------------------------------------------------
def test_registries_registry_tarball_and_headers(built: dict, tmp_path: Path) -> None:
    sha1 = built["out"]["tree_sha1"]
    with ThreadServer(cfg(built, built["store"], tmp_path / "c")) as srv:
        code, h, body = http(srv.url + "/registries")
        assert code == 200 and body.decode() == f"/registry/{GENERAL_UUID}/{sha1}\n"
        assert h["Cache-Control"] == "public, max-age=30"
        code, h, body = http(f"{srv.url}/registry/{GENERAL_UUID}/{sha1}")
        assert code == 200 and "immutable" in h["Cache-Control"]
        assert int(h["Content-Length"]) == len(body)
        assert unpack_hash(body, tmp_path / "reg") == sha1
        assert (tmp_path / "reg" / "D" / "DataFrames" / "Versions.toml").exists()
        code, h2, head = http(f"{srv.url}/registry/{GENERAL_UUID}/{sha1}", "HEAD")
        assert code == 200 and head == b"" and h2["Content-Length"] == h["Content-Length"]


def test_package_tarball_is_checked_deterministic_and_cached(built: dict,
                                                             tmp_path: Path) -> None:
    url = f"/package/{DF['uuid']}/{DF['tree_sha1']}"
    with ThreadServer(cfg(built, built["store"], tmp_path / "c1")) as srv:
        code, h, first = http(srv.url + url)
        again = http(srv.url + url)[2]
        builds = srv.app[PKG].cache.builds
    assert code == 200 and h["ETag"] == f'"{DF["tree_sha1"]}"'
    assert unpack_hash(first, tmp_path / "df") == DF["tree_sha1"]
    assert again == first and builds == 1
    with ThreadServer(cfg(built, built["store"], tmp_path / "c2")) as srv:
        assert http(srv.url + url)[2] == first  # same tree, same bytes


def test_strict_paths_and_unknown_hashes(built: dict, tmp_path: Path) -> None:
    other = packages()["Tables"]
    with ThreadServer(cfg(built, built["store"], tmp_path / "c")) as srv:
        u = srv.url
        cases = {
            f"/package/{DF['uuid']}/{'0' * 40}": 404,
            f"/package/{other['uuid']}/{DF['tree_sha1']}": 404,  # hash under the wrong uuid
            f"/registry/{GENERAL_UUID}/{'1' * 40}": 404,
            f"/artifact/{'2' * 40}": 404,
            f"/package/{DF['uuid']}/{DF['tree_sha1'].upper()}": 400,
            f"/package/{DF['uuid'].upper()}/{DF['tree_sha1']}": 400,
            f"/package/not-a-uuid/{DF['tree_sha1']}": 400,
            f"/package/{DF['uuid']}/%2e%2e": 400,
            "/artifact/..%2f..%2fetc%2fpasswd": 400,
            f"/package/{DF['uuid']}/{DF['tree_sha1']}/x": 404,
            "/package/../../etc/passwd": 404,
        }
        got = {path: http(u + path)[0] for path in cases}
        assert got == cases
        assert list((tmp_path / "c").iterdir()) == []  # nothing was built for any of them


def test_artifact_served_by_tree_hash(built: dict, tmp_path: Path) -> None:
    with ThreadServer(cfg(built, built["store"], tmp_path / "c")) as srv:
        code, _h, body = http(f"{srv.url}/artifact/{built['art_sha1']}")
    assert code == 200
    assert unpack_hash(body, tmp_path / "a") == built["art_sha1"]
    assert (tmp_path / "a" / "bin" / "run.sh").stat().st_mode & 0o100


def test_altered_cached_tarball_is_rebuilt_not_served(built: dict, tmp_path: Path,
                                                      caplog) -> None:
    url = f"/package/{DF['uuid']}/{DF['tree_sha1']}"
    with ThreadServer(cfg(built, built["store"], tmp_path / "c")) as srv:
        good = http(srv.url + url)[2]
        [cached] = list((tmp_path / "c").iterdir())
        data = bytearray(cached.read_bytes())
        data[len(data) // 2] ^= 0xFF
        cached.write_bytes(bytes(data))
        code, _h, body = http(srv.url + url)
    assert code == 200 and body == good
    assert "was altered on disk" in caplog.text


def test_planted_fifo_or_symlink_at_a_cached_name_is_rebuilt(built: dict, tmp_path: Path,
                                                             caplog) -> None:
    url = f"/package/{DF['uuid']}/{DF['tree_sha1']}"
    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"not a tarball")
    with ThreadServer(cfg(built, built["store"], tmp_path / "c")) as srv:
        good = http(srv.url + url)[2]
        for plant in (os.mkfifo, lambda p: p.symlink_to(decoy)):
            [cached] = list((tmp_path / "c").iterdir())
            cached.unlink()
            plant(cached)
            code, _h, body = http(srv.url + url)  # a hang fails on urllib's timeout
            assert (code, body) == (200, good)
            assert cached.is_file() and not cached.is_symlink()
        builds = srv.app[PKG].cache.builds
    assert builds == 3
    assert "not a regular file" in caplog.text


def test_tarball_conditional_requests_range_and_metrics(built: dict, tmp_path: Path) -> None:
    url = f"/package/{DF['uuid']}/{DF['tree_sha1']}"
    with ThreadServer(cfg(built, built["store"], tmp_path / "c")) as srv:
        _s, h, body = serve_helpers.raw(srv.url, "GET", url)
        etag, modified = h["etag"], h["last-modified"]
        assert etag == f'"{DF["tree_sha1"]}"'
        s304, h304, b304 = serve_helpers.raw(srv.url, "GET", url, headers={"If-None-Match": etag})
        s_ims = serve_helpers.raw(srv.url, "GET", url, headers={"If-Modified-Since": modified})[0]
        s206, h206, b206 = serve_helpers.raw(srv.url, "GET", url, headers={"Range": "bytes=10-19"})
        s_head, h_head, b_head = serve_helpers.raw(srv.url, "HEAD", url)
        hits = serve_helpers.metric(srv.url, "cas_pkg_tarball_hits_total")
        builds = serve_helpers.metric(srv.url, "cas_pkg_tarball_builds_total")
        built_bytes = serve_helpers.metric(srv.url, "cas_pkg_tarball_builds_bytes_total")
    assert (s304, b304, h304["etag"]) == (304, b"", etag)
    assert s_ims == 304
    assert (s206, b206, h206["content-range"]) == (206, body[10:20], f"bytes 10-19/{len(body)}")
    assert (s_head, b_head, int(h_head["content-length"])) == (200, b"", len(body))
    assert (builds, built_bytes, hits) == (1, len(body), 4)


def test_slow_build_answers_503_then_serves_the_finished_tarball(built: dict,
                                                                tmp_path: Path) -> None:
    url = f"/package/{DF['uuid']}/{DF['tree_sha1']}"
    with ThreadServer(cfg(built, built["store"], tmp_path / "c", build_timeout=0.001)) as srv:
        code, headers, _b = http(srv.url + url)
        deadline = time.monotonic() + 120
        while srv.app[PKG].cache.builds == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        again = http(srv.url + url)[0]
    assert (code, headers.get("Retry-After")) == (503, "10")
    assert again == 200


def _corrupt_first_pack(store: Path, tree: ObjectId) -> None:
    reader = TreeReader(Store.open(store))
    for _path, e in reader.walk(root_entry(tree)):
        if e.kind == Kind.FILE and e.oid is not None:
            p = object_path(store, e.oid)
            raw = bytearray(p.read_bytes())
            raw[-1] ^= 0xFF
            p.write_bytes(bytes(raw))
            return
    raise AssertionError("no stored file to corrupt")


def test_cache_is_bounded_lru_and_survives_restart(built: dict, tmp_path: Path) -> None:
    from casstore.server.tarcache import TarballCache
    store = Store.open(built["store"])
    reader = TreeReader(store)
    rc = content(built["store"], built)
    tb = packages()["Tables"]
    df_tree = rc.package_tree(reader, DF["uuid"], DF["tree_sha1"])
    tb_tree = rc.package_tree(reader, tb["uuid"], tb["tree_sha1"])
    probe = TarballCache(tmp_path / "probe", 1 << 30)
    df_size = probe.get(reader, df_tree, DF["tree_sha1"]).size
    first = probe.get(reader, df_tree, DF["tree_sha1"]).path.read_bytes()

    folder = tmp_path / "c"
    cache = TarballCache(folder, df_size + 1)
    cache.get(reader, df_tree, DF["tree_sha1"])
    cache.get(reader, tb_tree, tb["tree_sha1"])  # DF is evicted (LRU)
    assert [p.name.split("-")[1] for p in folder.iterdir()] == [tb["tree_sha1"]]
    held = cache.open_verified((tb_tree.hex, tb["tree_sha1"]))  # a send in progress
    assert held is not None
    again = cache.get(reader, df_tree, DF["tree_sha1"])  # Tables goes, but stays readable
    assert again.path.read_bytes() == first and cache.builds == 3
    assert [p.name.split("-")[1] for p in folder.iterdir()] == [DF["tree_sha1"]]
    fd, st = held
    assert len(os.pread(fd, st.st_size + 1, 0)) == st.st_size
    os.close(fd)

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid no process has now
    (folder / f"tmp-{dead.pid}-2-3").write_bytes(b"half a tarball of a dead build")
    (folder / f"tmp-{os.getpid()}-4-5").write_bytes(b"a build in progress (another worker)")
    restarted = TarballCache(folder, 1 << 30)
    assert restarted.get(reader, df_tree, DF["tree_sha1"]).path.read_bytes() == first
    assert restarted.builds == 0 and not (folder / f"tmp-{dead.pid}-2-3").exists()
    assert (folder / f"tmp-{os.getpid()}-4-5").exists()


def test_corrupt_store_object_gives_500_and_nothing_cached(built: dict, tmp_path: Path,
                                                          caplog) -> None:
    store = copy_store(built, tmp_path)
    rc = content(store, built)
    req = packages()["Requires"]
    _corrupt_first_pack(store, rc.package_tree(TreeReader(Store.open(store)), req["uuid"],
                                               req["tree_sha1"]))
    with ThreadServer(cfg(built, store, tmp_path / "c")) as srv:
        code, _h, _b = http(f"{srv.url}/package/{req['uuid']}/{req['tree_sha1']}")
        ok = http(f"{srv.url}/package/{DF['uuid']}/{DF['tree_sha1']}")[0]
    assert code == 500 and ok == 200
    assert "damaged or missing" in caplog.text
    assert all(req["tree_sha1"] not in p.name for p in (tmp_path / "c").iterdir())


def publish_swapped(built: dict, store: Path, victim: str, donor: str) -> None:
    """Sign registry-Evil: the same registry, but ``victim``'s hash maps to ``donor``'s
    tree (what a compromised map or a bug would look like to the server)."""
    s = Store.open(store)
    reader = TreeReader(s)
    rc = content(store, built)
    pmap = read_package_map(reader, rc.packages)
    v, d = packages()[victim], packages()[donor]
    pmap[(v["uuid"], v["tree_sha1"])] = pmap[(d["uuid"], d["tree_sha1"])]
    by_uuid: dict[str, dict[str, ObjectId]] = {}
    for (u, h), t in pmap.items():
        by_uuid.setdefault(u, {})[h] = t
    with s.lock(), Snapshot(s) as snap:
        subs = {u: snap.put_meta(ObjType.TREE, encode_map(m)) for u, m in by_uuid.items()}
        pk = snap.put_meta(ObjType.TREE, encode_map(subs))
        root = snap.put_meta(ObjType.TREE, encode_tree([
            dir_entry("artifacts", rc.artifacts), dir_entry("packages", pk),
            dir_entry("registry", rc.registry_tree)]))
    meta = {"kind": "julia-registry", "format": 1, "registry_name": rc.name,
            "registry_uuid": rc.uuid, "registry_tree_sha1": rc.tree_sha1,
            "registry_tree": str(rc.registry_tree), "packages": str(pk),
            "artifacts": str(rc.artifacts)}
    publish(s, load_secret(built["key"]), "registry-Evil", str(root), {}, None, meta, 30)


def test_wrong_tree_under_a_hash_is_refused(built: dict, tmp_path: Path, caplog) -> None:
    store = copy_store(built, tmp_path)
    publish_swapped(built, store, "Reexport", "Requires")
    rx = packages()["Reexport"]
    with ThreadServer(cfg(built, store, tmp_path / "c", registries=["registry-Evil"])) as srv:
        code, _h, body = http(f"{srv.url}/package/{rx['uuid']}/{rx['tree_sha1']}")
        again = http(f"{srv.url}/package/{rx['uuid']}/{rx['tree_sha1']}")[0]
        builds = srv.app[PKG].cache.builds
    assert code == 500 and b"does not match" in body and again == 500
    assert builds == 0  # refused once, remembered, never cached
    assert "refusing package" in caplog.text
    assert list((tmp_path / "c").iterdir()) == []


def test_cas_serve_process_serves_and_stops_on_sigterm(built: dict, tmp_path: Path) -> None:
    srv = ProcessServer(built["store"], built["pub"], tmp_path / "c", tmp_path / "log")
    with srv:
        assert http(srv.url + "/registries")[2].decode().endswith(
            f"/{built['out']['tree_sha1']}\n")
        assert http(srv.url + "/healthz")[0] == 200
        assert http(srv.url + "/registries", "POST")[0] == 405
    assert srv.proc.returncode == 0
    assert "serving registry-General@1" in (tmp_path / "log").read_text()


def test_two_workers_share_a_cold_cache(built: dict, tmp_path: Path) -> None:
    """Workers start together on one empty cache folder: one worker's start-up scan
    must not remove the temporary file of another's build in progress."""
    srv = ProcessServer(built["store"], built["pub"], tmp_path / "c", tmp_path / "log")
    srv.args += ["--workers", "2"]
    with srv:
        codes = [http(f"{srv.url}/package/{p['uuid']}/{p['tree_sha1']}")[0]
                 for name, p in packages().items() if name != HELD_BACK]
    assert codes == [200] * len(codes)
    assert "Traceback" not in (tmp_path / "log").read_text()


def test_cas_serve_needs_a_trusted_key_and_a_valid_listen(built: dict) -> None:
    res = cas(None, "serve", str(built["store"]), "--listen", "127.0.0.1:0",
              "--registry", "registry-General")  # Pkg needs keys (the store layout does not)
    assert res.code == 53 and "--trusted-key" in res.err
    res = cas(None, "serve", str(built["store"]), "--listen", "nope",
              "--trusted-key", str(built["pub"]))
    assert res.code == 53 and "HOST:PORT" in res.err


# -- real Julia --------------------------------------------------------------------------
ADD = f'''
using Pkg
Pkg.Registry.add(RegistrySpec(uuid = Base.UUID("{GENERAL_UUID}")))
Pkg.add("DataFrames")
Pkg.add("Tiny")
using Tiny
println("HELLO=", Tiny.hello())
Pkg.status()
'''
UPDATE = '''
using Pkg
Pkg.update()
Pkg.add("LorentzVectors")
Pkg.status()
'''
INSTANTIATE = '''
using Pkg
Pkg.activate(".")
Pkg.instantiate()
Pkg.status()
using Tiny
println("HELLO=", Tiny.hello(), " TINY=", Tiny.version())
'''


def status_lists(proc: subprocess.CompletedProcess[str], items: list[str]) -> bool:
    """Pkg.status() ran last and listed every item (Pkg 1.5 prints it on stdout)."""
    out = proc.stdout + proc.stderr
    at = out.rfind("Status `")
    return at >= 0 and all(i in out[at:] for i in items)


@pytest.mark.julia
@pytest.mark.slow
def test_julia_add_update_instantiate_status(built: dict, tmp_path: Path) -> None:
    store = copy_store(built, tmp_path)
    depot = tmp_path / "depot"
    env = depot / "environments" / "v1.5"
    with ProcessServer(store, built["pub"], tmp_path / "cache", tmp_path / "serve.log") as srv:
        proc = julia(ADD, depot, srv.url)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "HELLO=hello from an artifact" in proc.stdout
        assert status_lists(proc, ["DataFrames v1.2.2", "Tiny v0.1.0"])
        got = manifest_versions(env / "Manifest.toml")
        want = {n: (p["version"], p["tree_sha1"]) for n, p in packages().items()}
        assert "DataFrames" in got and got["Tiny"][0] == "0.1.0"
        assert {n: v for n, v in got.items() if n != "Tiny"} == \
            {n: want[n] for n in got if n != "Tiny"}
        assert (depot / "artifacts" / built["art_sha1"] / "hello.txt").exists()
        old_hash = built["out"]["tree_sha1"]

        # a second revision: a new version of Tiny and a package held back so far
        tiny_release(built["tiny"], "0.2.0", built["art_sha1"])
        rev2 = json.loads(cas(store, "--json", "registry", "build", str(built["tiny"]),
                              str(BUNDLES / f"{HELD_BACK}.bundle"), "--key", str(built["key"]),
                              "--repo-urls", str(built["urls"]), check=True).out)
        assert rev2["revision"] == 2 and sorted(rev2["added"]) == \
            [f"{HELD_BACK}@{packages()[HELD_BACK]['version']}", "Tiny@0.2.0"]
        deadline = time.monotonic() + 30
        while rev2["tree_sha1"] not in http(srv.url + "/registries")[2].decode():
            assert time.monotonic() < deadline, "new revision never listed"
            time.sleep(0.5)
        proc = julia(UPDATE, depot, srv.url)
        assert proc.returncode == 0, proc.stderr[-4000:]
        got = manifest_versions(env / "Manifest.toml")
        assert got["Tiny"][0] == "0.2.0"
        held = f"{HELD_BACK} v{packages()[HELD_BACK]['version']}"
        assert status_lists(proc, ["Tiny v0.2.0", held])
        assert got[HELD_BACK] == want[HELD_BACK][:1] + (packages()[HELD_BACK]["tree_sha1"],)
        info = tomllib.loads((depot / "registries" / "General" / ".tree_info.toml").read_text())
        assert info["git-tree-sha1"] == rev2["tree_sha1"]
        # a client that still holds revision 1 can fetch it
        assert http(f"{srv.url}/registry/{GENERAL_UUID}/{old_hash}")[0] == 200

        # the same environment, instantiated on a fresh depot from the Manifest
        project = tmp_path / "project"
        project.mkdir()
        for f in ("Project.toml", "Manifest.toml"):
            shutil.copy(env / f, project / f)
        depot2 = tmp_path / "depot2"
        proc = julia(INSTANTIATE, depot2, srv.url, cwd=project)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "HELLO=hello from an artifact\n TINY=0.2.0" in proc.stdout
        assert (depot2 / "packages" / "DataFrames").is_dir()
        assert (depot2 / "packages" / HELD_BACK).is_dir()


@pytest.mark.julia
def test_julia_refuses_wrong_tarball_and_we_refuse_first(built: dict, tmp_path: Path,
                                                         caplog) -> None:
    store = copy_store(built, tmp_path)
    publish_swapped(built, store, "Reexport", "Requires")
    add = f'''
    using Pkg
    Pkg.Registry.add(RegistrySpec(uuid = Base.UUID("{GENERAL_UUID}")))
    Pkg.add("Reexport")
    '''
    # our own check switched off: the wrong bytes reach Pkg, which refuses them
    off = cfg(built, store, tmp_path / "c1", registries=["registry-Evil"],
              check_tree_hash=False)
    with ThreadServer(off) as srv:
        proc = julia(add, tmp_path / "d1", srv.url, timeout=300)
    assert proc.returncode != 0
    assert "tarball content does not match git-tree-sha1" in proc.stderr
    assert not (tmp_path / "d1" / "packages" / "Reexport").exists()
    # with the check (the default) the server never sends them
    with ThreadServer(cfg(built, store, tmp_path / "c2", registries=["registry-Evil"])) as srv:
        proc = julia(add, tmp_path / "d2", srv.url, timeout=300)
    assert proc.returncode != 0
    assert "tarball content does not match" not in proc.stderr
    assert "refusing package" in caplog.text
    assert not (tmp_path / "d2" / "packages" / "Reexport").exists()
