"""Variant builds on separate builders composed into one signed release.

Two builder processes, each with its own store, work folder and builder key, build
one CPU level of the example depot each and push a part release to one real
`cas serve` with a token.  `cas depot compose` on the server's store signs the
release only when every level has arrived from the same inputs; the composed
release is then mounted with real FUSE and the job runs on both variants.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from casstore.julia.install import ensure_julia
from casstore.julia.namespace import namespaces_available
from casstore.releases.release import load_secret
from casstore.store.publish import publish
from casstore.store.writable import Store

from helpers import assert_one_line_error, cas
from serve_helpers import ProcessServer, new_store, token_for

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "examples" / "depot.toml"
JULIA = "/depot/julia/bin/julia"
EXPECTED_CHECKSUM = "65e16f18f73a1b88"  # 300 events, seed 20261125 (examples/jobs)
LEVELS = ("x86-64", "x86-64-v3")

pytestmark = [pytest.mark.julia, pytest.mark.fuse,
              pytest.mark.skipif(not namespaces_available(),
                                 reason="needs root and unshare(1) for private mounts")]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    """Keys, a token, and one `cas serve` trusting both builders and the release key."""
    ensure_julia()
    base = tmp_path_factory.mktemp("compose")
    for k in ("release", "builder-a", "builder-b"):
        cas(None, "keygen", str(base / f"{k}.key"), check=True)
    server = new_store(base / "server")
    token = base / "token"
    token.write_text(token_for(server, "ci") + "\n")
    trust = [a for k in ("release", "builder-a", "builder-b")
             for a in ("--trusted-key", str(base / f"{k}.key.pub"))]
    with ProcessServer(server, base / "serve.log", *trust) as srv:
        yield {"base": base, "server": server, "url": srv.url, "token": token}


def build_level(site: dict, builder: str, level: str) -> dict:
    """One builder: its own store and work folder, one level, pushed with the token."""
    b = site["base"]
    res = cas(b / f"store-{builder}", "--json", "depot", "build", str(SPEC), "--out",
              str(b / f"work-{builder}"), "--variant", level, "--release", "demo",
              "--key", str(b / f"{builder}.key"), "--push", site["url"],
              "--token-file", str(site["token"]), check=True, timeout=3600)
    return json.loads(res.out)


def compose(site: dict, *extra: str):
    b = site["base"]
    return cas(site["server"], "--json", "depot", "compose", "demo", "--key",
               str(b / "release.key"), "--builder-key", str(b / "builder-a.key.pub"),
               "--builder-key", str(b / "builder-b.key.pub"), *extra, timeout=600)


@pytest.fixture(scope="module")
def composed(site: dict) -> dict:
    """Builder A's part alone is refused; with B's part too, the release is signed."""
    a = build_level(site, "builder-a", "x86-64")
    only_a = compose(site)
    b = build_level(site, "builder-b", "x86-64-v3")
    done = compose(site)
    assert done.code == 0, done.err
    return {"a": a, "b": b, "only_a": only_a, "summary": json.loads(done.out)}


def test_builders_push_parts_with_the_same_common_tree(composed: dict) -> None:
    a, b = composed["a"], composed["b"]
    assert a["root"] == b["root"]  # same input key on both builders: same common tree
    assert list(a["variants"]) == ["x86-64"] and list(b["variants"]) == ["x86-64-v3"]
    assert [p["name"] for p in a["parts"]] == ["demo.part-x86-64"]
    assert a["pushed"][0]["release_written"] and b["pushed"][0]["release_written"]
    assert b["pushed"][0]["moved"] < b["pushed"][0]["objects"]  # the root was there


def test_missing_level_is_named_and_nothing_is_signed(composed: dict) -> None:
    res = composed["only_a"]
    assert res.code == 26
    assert_one_line_error(res)
    assert "variant x86-64-v3: no verified demo.part-x86-64-v3" in res.err


def test_composed_release_lists_both_levels(site: dict, composed: dict) -> None:
    s = composed["summary"]
    assert s["revision"] == 1 and not s["unchanged"]
    assert s["variants"] == {"x86-64": composed["a"]["variants"]["x86-64"],
                             "x86-64-v3": composed["b"]["variants"]["x86-64-v3"]}
    assert s["root"] == composed["a"]["root"] and s["baseline"] == "x86-64"
    shown = json.loads(cas(site["server"], "--json", "release", "show", "demo",
                           "--trusted-key", str(site["base"] / "release.key.pub"),
                           check=True).out)
    assert json.dumps(shown).count(composed["b"]["variants"]["x86-64-v3"]) >= 1
    again = compose(site)
    assert again.code == 0 and json.loads(again.out)["unchanged"]


def run_job(site: dict, level: str, scratch: Path) -> subprocess.CompletedProcess:
    """`cas exec` the composed release at /depot (real FUSE) and run the example job."""
    b = site["base"]
    cfg = b / "client.toml"
    cfg.write_text(f'trusted_keys = ["{b}/release.key.pub"]\ncache_dir = "{b}/cache"\n'
                   f'state_dir = "{b}/state"\n')
    scratch.mkdir()
    events = scratch / "events.txt"
    script = (f"{JULIA} --startup-file=no /depot/jobs/gen_events.jl {events} 300 && "
              f"{JULIA} --startup-file=no /depot/jobs/jetjob.jl {events} --report")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JULIA_")}
    env.update(JULIA_DEPOT_PATH=f"{scratch}:/depot", JULIA_DEBUG="loading")
    return subprocess.run([sys.executable, "-m", "casstore", "--store", str(site["server"]),
                           "exec", "demo", "--config", str(cfg), "--arch", level, "--",
                           "sh", "-c", script], capture_output=True, text=True, env=env,
                          timeout=900)


@pytest.mark.parametrize("level", LEVELS)
def test_job_runs_on_each_level_of_the_composed_release(site: dict, composed: dict,
                                                        level: str, tmp_path: Path) -> None:
    from casstore.julia.abcheck import parse_loading_log

    p = run_job(site, level, tmp_path / "scratch")
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"CHECKSUM {EXPECTED_CHECKSUM}" in p.stdout
    rejected, precompiled = parse_loading_log(p.stderr)
    assert rejected == [] and precompiled == []  # the level's image and caches were used
    assert not (tmp_path / "scratch" / "compiled").exists()


def test_part_from_other_inputs_is_refused_by_name(site: dict, composed: dict) -> None:
    """A builder that built from other inputs: compose names the level and the key."""
    b = site["base"]
    store = Store.open(b / "store-builder-b")
    try:
        good = json.loads(cas(b / "store-builder-b", "--json", "release", "show",
                              "demo.part-x86-64-v3", "--trusted-key",
                              str(b / "builder-b.key.pub"), check=True).out)
        meta = {**good["meta"], "input_key": "f" * 64}
        publish(store, load_secret(b / "builder-b.key"), "demo.part-x86-64-v3",
                good["root"], good["variants"], "x86-64-v3", meta, 30)
    finally:
        store.close()
    cas(b / "store-builder-b", "push", site["url"], "demo.part-x86-64-v3", "--token-file",
        str(site["token"]), check=True)
    res = compose(site)
    assert res.code == 26
    assert_one_line_error(res)
    assert "input key differs" in res.err and "x86-64-v3 ffffffffffffffff" in res.err
    shown = json.loads(cas(site["server"], "--json", "release", "show", "demo",
                           "--trusted-key", str(b / "release.key.pub"), check=True).out)
    assert shown["revision"] == 1  # nothing new was signed
