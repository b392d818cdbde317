"""``cas doctor``: one test per check that breaks exactly that thing.

Each asserts the check's ``FAIL`` line, that no other check fails (later checks
that depend on it say ``SKIP``), and exit status 58.  The releases carry a stand-in
``julia/bin/julia`` (a shell script) so the julia check runs everywhere in seconds;
the all-OK run at the end uses the real Julia of the example depot the Julia tests
build.  The checks themselves are the model in ``casstore/client/doctor*.py``, tested
directly where no exit status is involved.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import test_julia_mount

from casstore.client import doctor, doctor_checks
from casstore.errors import DoctorFailed
from casstore.releases.release import Release, load_secret, sign

from fuse_fixtures import Kit, run_cas

# The example depot the Julia tests build (a module-scoped fixture; its overlays come
# from the build cache, so a second build here takes seconds).
published = test_julia_mount.published
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="the julia check mounts privately: root and unshare(1)")
JULIA_OK = "#!/bin/sh\nexit 0\n"
JULIA_BAD = ("#!/bin/sh\necho 'ERROR: Unable to find compatible target in system image.' >&2\n"
             "exit 1\n")


def make_release(kit: Kit, name: str, julia: str = JULIA_OK, **kw) -> bytes:
    src = kit.base / f"src-{name}"
    (src / "julia" / "bin").mkdir(parents=True)
    (src / "julia" / "bin" / "julia").write_text(julia)
    os.chmod(src / "julia" / "bin" / "julia", 0o755)
    (src / "hello.txt").write_text(f"release {name}\n")
    return kit.publish(name, 1, kit.put(src), **kw)


def parse(out: str) -> dict[str, tuple[str, str]]:
    """``{check name: (status, detail)}`` from the text output (one line per check)."""
    res = {}
    for line in out.splitlines():
        status, _, rest = line.partition(" ")
        name, _, detail = rest.strip().partition(": ")
        assert status in ("OK", "FAIL", "SKIP"), line
        res[name] = (status, detail)
    return res


def run_doctor(kit: Kit, *args: str, config: Path | None = None
               ) -> tuple[int, dict[str, tuple[str, str]], str]:
    res = run_cas("doctor", "--config", str(config or kit.config), *args, timeout=600)
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, parse(res.stdout), res.stderr


def assert_only_failure(code: int, checks: dict, name: str, words: str, err: str) -> None:
    assert code == DoctorFailed.exit_code, (code, checks, err)
    assert checks[name][0] == "FAIL" and words in checks[name][1], checks
    others = {k: v for k, v in checks.items() if k != name and v[0] == "FAIL"}
    assert others == {}, others
    assert err.strip().startswith("cas: error:") and name in err and len(err.splitlines()) == 1


@pytest.fixture
def rel(kit: Kit) -> Kit:
    make_release(kit, "rel")
    return kit


@pytest.mark.slow
@needs_root
def test_all_ok_with_a_stand_in_julia(rel: Kit) -> None:
    code, checks, err = run_doctor(rel, "rel")
    assert code == 0, (checks, err)
    assert list(checks) == ["config", "keys", f"source {rel.base / 'store'}", "cache", "cpu",
                            "julia"]
    assert {s for s, _ in checks.values()} == {"OK"}
    assert "rel revision 1 verifies" in checks[f"source {rel.base / 'store'}"][1]
    assert "mounted privately" in checks["julia"][1]


def test_bad_config(rel: Kit) -> None:
    bad = rel.base / "bad.toml"
    bad.write_text(rel.config.read_text() + 'cache_sise = "1G"\n')  # a typo'd key
    code, checks, err = run_doctor(rel, "rel", config=bad)
    assert_only_failure(code, checks, "config", "unknown setting(s) in client config: "
                                                "cache_sise", err)
    assert [s for s, _ in checks.values()] == ["FAIL", "SKIP", "SKIP", "SKIP", "SKIP", "SKIP"]


def test_missing_key_file(rel: Kit) -> None:
    cfg = rel.base / "nokey.toml"
    cfg.write_text(rel.config.read_text().replace("release.key.pub", "gone.pub"))
    code, checks, err = run_doctor(rel, "rel", config=cfg)
    assert_only_failure(code, checks, "keys", "gone.pub", err)
    assert checks[f"source {rel.base / 'store'}"][0] == "SKIP"
    assert checks["julia"][0] == "SKIP"


@needs_root
def test_wrong_key(rel: Kit) -> None:
    """A key that loads but did not sign the release: the source check fails."""
    cfg = rel.base / "otherkey.toml"
    cfg.write_text(rel.config.read_text().replace("release.key.pub", "other.key.pub"))
    code, checks, err = run_doctor(rel, "rel", config=cfg)
    assert_only_failure(code, checks, f"source {rel.base / 'store'}", "untrusted key", err)
    assert checks["keys"][0] == "OK" and checks["julia"][0] == "SKIP"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["url", "folder"])
def test_unreachable_source(rel: Kit, where: str) -> None:
    spec = (f"http://127.0.0.1:{_closed_port()}/store" if where == "url"
            else str(rel.base / "no-such-store"))
    cfg = rel.base / "unreachable.toml"
    cfg.write_text(rel.config.read_text().replace('source = "store"', f'source = "{spec}"')
                   + "connect_timeout = 2\nrequest_timeout = 10\n")
    code, checks, err = run_doctor(rel, "rel", config=cfg)
    assert_only_failure(code, checks, f"source {spec}", "unreachable", err)
    assert checks["julia"][0] == "SKIP"


@pytest.mark.slow
@needs_root
@pytest.mark.parametrize("how,words", [("tampered", "signature"), ("expired", "expired")])
def test_unverifiable_release(rel: Kit, how: str, words: str) -> None:
    if how == "tampered":  # revision 2 signed, then its root tree swapped
        other_root = str(rel.put(rel.base / "store" / "casstore.json"))
        now = int(time.time())
        good = sign(Release("rel", 2, str(rel.put(rel.base / "src-rel")), now - 10, now + 3600),
                    load_secret(rel.key))
        rel.write_raw_release("rel", 2, rel.tamper(good, root=other_root))
    else:
        rel.publish("rel", 2, rel.put(rel.base / "src-rel"), expires_in=-60)
    code, checks, err = run_doctor(rel, "rel")
    assert_only_failure(code, checks, f"source {rel.base / 'store'}", words, err)
    assert checks["julia"][0] == "SKIP"


@pytest.mark.slow
@needs_root
@pytest.mark.parametrize("breakage,words", [
    ("owner", "is owned by uid 4242"),
    ("mode", "writable by group or others (mode 0777"),
    ("full", "below the threshold of 1000.0 TiB"),
])
def test_cache_folder(rel: Kit, breakage: str, words: str) -> None:
    cache = rel.base / "cache"
    cache.mkdir(mode=0o700)
    args = ["rel", "--no-julia"]  # a refused cache would also stop the julia mount
    if breakage == "owner":
        os.chown(cache, 4242, 4242)
    elif breakage == "mode":
        os.chmod(cache, 0o777)
    else:
        args += ["--min-free", "1000T"]  # stands in for a full disk
    code, checks, err = run_doctor(rel, *args)
    assert_only_failure(code, checks, "cache", words, err)
    assert checks["julia"] == ("SKIP", "not asked (--no-julia)")


@needs_root
def test_no_variant_runs_on_this_cpu(rel: Kit) -> None:
    """A release with only an x86-64-v3 variant, probed as an x86-64 host."""
    ovl = rel.base / "ovl"
    ovl.mkdir()
    (ovl / "v3.txt").write_text("v3\n")
    make_release(rel, "v3only", variants={"x86-64-v3": rel.put(ovl)}, baseline="x86-64-v3")
    code, checks, err = run_doctor(rel, "v3only", "--arch", "x86-64")
    assert_only_failure(code, checks, "cpu", "no variant forced level x86-64 can run", err)
    assert checks["julia"][0] == "SKIP"


@pytest.mark.slow
@needs_root
def test_julia_does_not_start(rel: Kit) -> None:
    make_release(rel, "broken", julia=JULIA_BAD)
    code, checks, err = run_doctor(rel, "broken")
    assert_only_failure(code, checks, "julia", "exited with 1: ERROR: Unable to find "
                                               "compatible target in system image.", err)


def test_not_a_julia_depot(rel: Kit) -> None:
    src = rel.base / "plain"
    src.mkdir()
    (src / "x").write_text("x")
    rel.publish("plain", 1, rel.put(src))
    code, checks, err = run_doctor(rel, "plain")
    assert_only_failure(code, checks, "julia", "has no /julia/bin/julia", err)


@pytest.mark.slow
def test_through_a_live_mount(rel: Kit, mounter) -> None:
    mp = mounter.mount("rel")
    code, checks, err = run_doctor(rel, str(mp))
    assert code == 0, (checks, err)
    assert checks["mount"][0] == "OK" and "rel revision 1" in checks["mount"][1]
    assert checks["julia"][0] == "OK" and f"from {mp}" in checks["julia"][1]
    code, checks, err = run_doctor(rel, str(rel.base / "src-rel"))
    assert_only_failure(code, checks, "mount", "no casstore status", err)


def test_json_output(rel: Kit) -> None:
    res = run_cas("--json", "doctor", "--config", str(rel.config), "rel", "--no-julia",
                  "--min-free", "1000T")
    assert res.returncode == DoctorFailed.exit_code
    doc = json.loads(res.stdout)
    assert doc["ok"] is False
    assert [c["status"] for c in doc["checks"] if c["check"] == "cache"] == ["FAIL"]


def test_model_without_the_cli(rel: Kit) -> None:
    """The checks are plain functions: run() returns them, failed() picks the FAILs."""
    checks = doctor.run(doctor.Options(config_path=rel.config, target="rel", julia=False))
    assert doctor.failed(checks) == []
    assert checks[0].line().startswith("OK   config: ")
    cache = rel.base / "cache"
    cache.mkdir()
    os.chmod(cache, 0o770)
    cfg = doctor_checks.load(rel.config)
    bad = doctor_checks.check_cache(cfg, 0)
    assert bad.status == "FAIL" and "mode 0770" in bad.detail
    os.chmod(cache, 0o700)
    assert doctor_checks.check_cache(cfg, 0).status == "OK"
    assert doctor_checks.check_cache(cfg, 1 << 60).status == "FAIL"


@pytest.mark.julia
@pytest.mark.fuse
@needs_root
def test_all_ok_with_real_julia(published: dict) -> None:
    """The example depot the Julia tests build (test_julia_mount's fixture): every
    check OK, and the julia line is the real Julia 1.5.3 started from the mount."""
    res = run_cas("--store", str(published["store"]), "doctor", "demo", "--config",
                  str(published["config"]), timeout=900)
    checks = parse(res.stdout)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert {s for s, _ in checks.values()} == {"OK"}, checks
    assert "variant x86-64" in checks["cpu"][1]  # x86-64 or x86-64-v3, as detected
    assert "julia -e 1 from demo@" in checks["julia"][1]
    assert "exited 0" in checks["julia"][1]
