"""Variant resolution at mount time: forced levels, host detection, xattr and status."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from casstore.errors import UnsafeFolder, VariantRefused
from casstore.releases.variants import choose

from fuse_fixtures import Kit, Mounter, run_cas

pytestmark = pytest.mark.fuse
LEVELS = ("x86-64", "x86-64-v3")


@pytest.fixture
def variant_release(kit: Kit) -> None:
    """Base tree with a generic sysimage; overlays for x86-64 and x86-64-v3."""
    base = kit.base / "base"
    (base / "lib" / "julia").mkdir(parents=True)
    (base / "lib" / "julia" / "sys.so").write_bytes(b"generic image\n")
    (base / "lib" / "libother.so").write_bytes(b"shared by all\n")
    (base / "compiled").mkdir()
    (base / "compiled" / "Common.ji").write_bytes(b"common cache\n")
    variants = {}
    for lvl in LEVELS:
        ov = kit.base / f"ov-{lvl}"
        (ov / "lib" / "julia").mkdir(parents=True)
        (ov / "lib" / "julia" / "sys.so").write_bytes(f"image for {lvl}\n".encode() * 1000)
        (ov / "compiled" / "v1").mkdir(parents=True)
        (ov / "compiled" / "v1" / "Pkg.ji").write_bytes(f"cache built on {lvl}\n".encode())
        if lvl == "x86-64-v3":
            (ov / "compiled" / "v1" / "OnlyV3.ji").write_bytes(b"v3 only\n")
        variants[lvl] = kit.put(ov)
    kit.publish("multi", 1, kit.put(base), variants=variants, baseline="x86-64")


def _check(mp: Path, level: str) -> None:
    sysimg = mp / "lib" / "julia" / "sys.so"
    assert sysimg.read_bytes() == f"image for {level}\n".encode() * 1000
    assert os.getxattr(sysimg, "user.cas.variant") == level.encode()
    assert "user.cas.variant" in os.listxattr(sysimg)
    assert (mp / "compiled" / "v1" / "Pkg.ji").read_bytes() == f"cache built on {level}\n".encode()
    assert os.getxattr(mp / "compiled" / "v1" / "Pkg.ji", "user.cas.variant") == level.encode()
    # Paths outside the overlay come from the base tree and carry no variant xattr.
    assert (mp / "lib" / "libother.so").read_bytes() == b"shared by all\n"
    assert (mp / "compiled" / "Common.ji").read_bytes() == b"common cache\n"
    with pytest.raises(OSError) as info:
        os.getxattr(mp / "lib" / "libother.so", "user.cas.variant")
    assert info.value.errno == errno.ENODATA
    assert ((mp / "compiled" / "v1" / "OnlyV3.ji").exists()) == (level == "x86-64-v3")
    assert os.getxattr(mp, "user.cas.level") == level.encode()
    names = sorted(os.listdir(mp / "compiled"))
    assert names == ["Common.ji", "v1"]


@pytest.mark.slow
@pytest.mark.parametrize(("forced", "expected"), [("x86-64", "x86-64"),
                                                  ("x86-64-v3", "x86-64-v3"),
                                                  ("x86-64-v2", "x86-64"),
                                                  ("x86-64-v4", "x86-64-v3")])
def test_forced_level(kit: Kit, mounter: Mounter, variant_release, forced: str,
                      expected: str) -> None:
    mp = mounter.mount("multi", "--arch", forced)
    _check(mp, expected)
    assert f"variant: {expected}, forced" in mounter.output()
    st = json.loads(run_cas("--json", "status", "--config", str(kit.config), str(mp)).stdout)
    assert (st["variant"], st["variant_choice"]) == (expected, "forced")


# psABI level requirements (x86-64 psABI 1.0, §3.1.1), as /proc/cpuinfo names them.
V2_FLAGS = {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"}
V3_FLAGS = V2_FLAGS | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe",
                       "xsave"}


def cpuinfo_level() -> str:
    """The host's best level among LEVELS, read from /proc/cpuinfo flags directly."""
    flags: set[str] = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.partition(":")[2].split())
                break
    return "x86-64-v3" if V3_FLAGS <= flags else "x86-64"


@pytest.mark.slow
def test_host_detection(kit: Kit, mounter: Mounter, variant_release) -> None:
    expected = cpuinfo_level()
    mp = mounter.mount("multi")
    _check(mp, expected)
    assert f"variant: {expected}, detected" in mounter.output()


def test_unknown_level_is_refused(kit: Kit, variant_release) -> None:
    (kit.base / "m").mkdir()
    res = run_cas("mount", "--config", str(kit.config), "--arch", "pentium4", "multi",
                  str(kit.base / "m"))
    assert res.returncode == 2 and "unknown CPU level" in res.stderr


def test_level_above_the_host_is_refused(kit: Kit) -> None:
    """FORMAT §6.3: never a level above the host's, not even as the baseline."""
    only = kit.base / "v4"
    only.mkdir()
    (only / "sys.so").write_bytes(b"needs avx512\n")
    kit.publish("v4only", 1, kit.put(kit.base / "v4"),
                variants={"x86-64-v4": kit.put(only)}, baseline="x86-64-v4")
    (kit.base / "m").mkdir()
    res = run_cas("mount", "--config", str(kit.config), "--arch", "x86-64", "v4only",
                  str(kit.base / "m"))
    assert res.returncode == VariantRefused.exit_code == 27, res.stderr
    assert "no variant" in res.stderr and "variant: x86-64-v4" not in res.stdout
    assert len(res.stderr.strip().splitlines()) == 1
    with open("/proc/self/mounts") as f:
        assert str(kit.base / "m") not in f.read()


@pytest.mark.parametrize(("available", "baseline", "forced", "expected"), [
    (["x86-64", "x86-64-v3"], "x86-64", "x86-64-v2", "x86-64"),
    (["x86-64-v2", "x86-64-v3"], "x86-64-v3", "x86-64-v2", "x86-64-v2"),
    (["x86-64-v3"], "x86-64-v3", "x86-64-v2", None),
    (["x86-64-v4"], "x86-64-v4", "x86-64-v3", None),
])
def test_choose_never_above_the_forced_level(available, baseline, forced, expected) -> None:
    if expected is None:
        with pytest.raises(VariantRefused):
            choose(available, baseline, forced)
    else:
        assert choose(available, baseline, forced) == expected


@pytest.mark.parametrize("arch", [None, "x86-64-v4"])
def test_unknown_level_is_refused_like_a_level_above_the_host(kit: Kit, arch) -> None:
    """FORMAT §6.3: a signed release whose only variant (and baseline) is a level this
    client does not know (x86-64-v5) mounts nowhere, not even on a v4 host."""
    only = kit.base / "v5"
    only.mkdir(exist_ok=True)
    (only / "sys.so").write_bytes(b"needs a CPU from the future\n")
    kit.publish("v5only", 1, kit.put(only), variants={"x86-64-v5": kit.put(only)},
                baseline="x86-64-v5")
    (kit.base / "m").mkdir(exist_ok=True)
    res = run_cas("mount", "--config", str(kit.config), *(["--arch", arch] if arch else []),
                  "v5only", str(kit.base / "m"))
    assert res.returncode == VariantRefused.exit_code, res.stderr
    assert "unknown level x86-64-v5" in res.stderr and len(res.stderr.splitlines()) == 1
    with open("/proc/self/mounts") as f:
        assert str(kit.base / "m") not in f.read()
    with pytest.raises(VariantRefused):
        choose(["x86-64-v5"], "x86-64-v5", "x86-64-v4")


@pytest.mark.parametrize("plant", ["fifo", "file", "dangling symlink"])
def test_cache_files_folder_replaced_by_a_non_folder_is_the_unsafe_cache_error(
        kit: Kit, plant: str) -> None:
    """``cache_dir/files`` as a FIFO, a plain file or a dangling symlink: the unsafe
    cache error (exit 26, one line), not 'File exists'."""
    src = kit.base / "s"
    src.mkdir()
    (src / "a").write_text("a\n")
    kit.publish("plain", 1, kit.put(src))
    files = kit.base / "cache" / "files"
    files.parent.mkdir(mode=0o700)
    if plant == "fifo":
        os.mkfifo(files)
    elif plant == "file":
        files.write_text("x")
    else:
        files.symlink_to(kit.base / "nowhere")
    (kit.base / "m").mkdir()
    res = run_cas("mount", "--config", str(kit.config), "plain", str(kit.base / "m"))
    assert res.returncode == UnsafeFolder.exit_code, res.stderr
    assert "not a directory" in res.stderr and "File exists" not in res.stderr
    assert len(res.stderr.splitlines()) == 1
    assert not (kit.base / "nowhere").exists()
