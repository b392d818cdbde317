"""Every bad depot spec value fails fast through the real `cas depot build`: one line,
its own exit code (casstore.errors 40-47), and no Julia run or runtime copy before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from casstore.errors import (
    BadCpuTarget,
    CasError,
    InstallError,
    PackageMismatch,
    SpecError,
    SpecPathError,
    UnknownVariant,
    UnsupportedJuliaVersion,
    UsageError,
)
from casstore.julia.namespace import namespaces_available
from casstore.julia.spec import DEFAULT_PREFIX, load_spec

from helpers import assert_one_line_error, cas

UUID = "0b3a2e4c-6d5f-4e1a-9c8b-7a6d5e4f3a2b"
PROJECT = f'name = "Tiny"\nuuid = "{UUID}"\nversion = "0.1.0"\n'
GOOD = {
    "julia": '[julia]\nversion = "1.5.3"\n',
    "packages": f'[[packages]]\nname = "Tiny"\nuuid = "{UUID}"\nversion = "0.1.0"\n'
                'path = "Tiny"\n',
    "files": '[files]\njobs = "jobs"\n',
    "workload": '[workload]\nscript = "jobs/w.jl"\n',
    "variants": '[[variants]]\nname = "x86-64"\n',
}


def _spec(tmp: Path, **parts: str) -> Path:
    """A spec in `tmp` from GOOD with some sections replaced ('' drops one)."""
    (tmp / "Tiny" / "src").mkdir(parents=True, exist_ok=True)
    (tmp / "Tiny" / "Project.toml").write_text(PROJECT)
    (tmp / "Tiny" / "src" / "Tiny.jl").write_text("module Tiny\nf(x) = x + 1\nend\n")
    (tmp / "jobs").mkdir(exist_ok=True)
    (tmp / "jobs" / "w.jl").write_text("using Tiny\nprintln(Tiny.f(1))\n")
    path = tmp / "depot.toml"
    sections = list({**GOOD, **parts}.values())
    top = [s for s in sections if s and not s.startswith("[")]  # before any [table]
    path.write_text("\n".join(top + [s for s in sections if s not in top]))
    return path


# (id, sections replaced, expected class, words the message must hold)
CASES = [
    ("not-toml", {"julia": "[julia\n"}, SpecError, "not valid TOML"),
    ("unknown-top-key", {"extra": "colour = 'red'\n"}, SpecError, "unknown key 'colour'"),
    ("unknown-package-key", {"packages": GOOD["packages"] + "sysimge = false\n"}, SpecError,
     "unknown key 'sysimge'"),
    ("version-not-string", {"julia": "[julia]\nversion = 1.5\n"}, SpecError,
     "julia.version must be a string"),
    ("sysimage-not-bool", {"packages": GOOD["packages"] + 'sysimage = "yes"\n'}, SpecError,
     "sysimage must be true or false"),
    ("epoch-not-int", {"build": '[build]\nepoch = "2020"\n'}, SpecError,
     "build.epoch must be an integer"),
    ("epoch-negative", {"build": "[build]\nepoch = -1\n"}, SpecError, "build.epoch"),
    ("variants-not-array", {"variants": 'variants = "x86-64"\n'}, SpecError,
     "variants must be an array"),
    ("files-not-path", {"files": "[files]\njobs = 3\n"}, SpecError, "files.jobs"),
    ("no-workload", {"workload": ""}, SpecError, "missing key 'workload'"),
    ("no-variants", {"variants": ""}, SpecError, "at least one"),
    ("duplicate-variant", {"variants": GOOD["variants"] * 2}, SpecError, "unique"),
    ("bad-uuid", {"packages": GOOD["packages"].replace(UUID, "not-a-uuid")}, SpecError,
     "uuid"),
    ("bad-package-name", {"packages": GOOD["packages"].replace('"Tiny"\nuuid', '"Ti ny"\nuuid')},
     SpecError, "not a Julia package name"),
    ("bad-env-name", {"env": '[environment]\nname = "a/b"\n'}, SpecError, "environment.name"),
    ("job-empty", {"job": "[job]\ncommand = []\n"}, SpecError, "job.command"),
    ("julia-1.6", {"julia": '[julia]\nversion = "1.6.0"\n'}, UnsupportedJuliaVersion,
     "Julia 1.6.0 is not supported"),
    ("julia-garbage", {"julia": '[julia]\nversion = "one"\n'}, UnsupportedJuliaVersion,
     "X.Y.Z"),
    ("variant-pentium", {"variants": '[[variants]]\nname = "pentium"\n'}, UnknownVariant,
     "'pentium'"),
    ("baseline-not-variant", {"baseline": 'baseline = "x86-64-v3"\n'}, UnknownVariant,
     "baseline 'x86-64-v3'"),
    ("cpu-target-unknown-cpu",
     {"variants": '[[variants]]\nname = "x86-64"\ncpu_target = "pentium99"\n'},
     BadCpuTarget, "'pentium99'"),
    ("cpu-target-bad-feature",
     {"variants": '[[variants]]\nname = "x86-64-v3"\ncpu_target = "haswell,-rdrandom"\n'},
     BadCpuTarget, "'-rdrandom'"),
    ("files-source-missing", {"files": '[files]\njobs = "jobs"\ndata = "nowhere"\n'},
     SpecPathError, "nowhere does not exist"),
    ("files-escape-depot", {"files": '[files]\njobs = "jobs"\n"../etc" = "jobs"\n'},
     SpecPathError, "inside the depot"),
    ("workload-not-provided", {"workload": '[workload]\nscript = "jobs/missing.jl"\n'},
     SpecPathError, "jobs/missing.jl"),
    ("package-path-missing", {"packages": GOOD["packages"].replace('"Tiny"\n', '"Gone"\n')},
     SpecPathError, "Gone does not exist"),
    ("julia-prefix-missing", {"julia": '[julia]\nprefix = "no-julia-here"\n'},
     SpecPathError, "no-julia-here"),
    ("job-script-not-provided", {"job": '[job]\ncommand = ["jobs/other.jl"]\n'},
     SpecPathError, "jobs/other.jl"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("parts", "cls", "words"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_spec_value_is_one_line_with_its_code(tmp_path: Path, parts, cls, words) -> None:
    spec = _spec(tmp_path, **parts)
    with pytest.raises(cls) as ei:  # the model says the same as the CLI, class for class
        load_spec(spec)
    assert type(ei.value) is cls
    out = tmp_path / "out"
    res = cas(tmp_path / "store", "depot", "build", str(spec), "--out", str(out))
    assert_one_line_error(res)
    assert res.code == cls.exit_code, res.err
    assert words in res.err
    assert not out.exists()  # failed before staging anything


def test_each_spec_error_class_has_its_own_code() -> None:
    classes = [SpecError, UnsupportedJuliaVersion, UnknownVariant, BadCpuTarget,
               SpecPathError, PackageMismatch, InstallError]
    assert len({c.exit_code for c in classes}) == len(classes)
    assert all(issubclass(c, CasError) for c in classes)


def test_good_spec_parses(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, job='[job]\ncommand = ["jobs/w.jl", "a b"]\n'))
    assert [v.cpu_target for v in spec.variants] == ["x86-64"]
    assert spec.job is not None and spec.job.command == ("jobs/w.jl", "a b")


# Caught after the spec parses but before the Julia runtime is copied or run: they need
# the real Julia prefix (its stdlib list) to get that far.
# (and, like every build, private mount namespaces, checked first).
needs_prefix = pytest.mark.skipif(not Path(DEFAULT_PREFIX.format(version="1.5.3"),
                                           "bin/julia").is_file(),
                                  reason="needs the Julia prefix (tools/install-julia)")
needs_ns = pytest.mark.skipif(not namespaces_available(),
                              reason="a build checks for root and unshare(1) first")


@needs_prefix
@needs_ns
@pytest.mark.parametrize(("project", "words"), [
    (PROJECT.replace("0.1.0", "0.2.0"), "version='0.2.0', spec says '0.1.0'"),
    (PROJECT + '[deps]\nNotThere = "1b3a2e4c-6d5f-4e1a-9c8b-7a6d5e4f3a2b"\n',
     "depends on NotThere"),
    ("name = \n", "cannot read Project.toml"),
], ids=["version", "unknown-dep", "broken-project"])
def test_package_disagreeing_with_spec(tmp_path: Path, project: str, words: str) -> None:
    spec = _spec(tmp_path)
    (tmp_path / "Tiny" / "Project.toml").write_text(project)
    out = tmp_path / "out"
    res = cas(tmp_path / "store", "-q", "depot", "build", str(spec), "--out", str(out))
    assert_one_line_error(res)
    assert res.code == PackageMismatch.exit_code and words in res.err, res.err
    assert not (out / "root" / "julia").exists()  # runtime never copied, Julia never run


@needs_ns
def test_prefix_without_julia_is_an_install_error(tmp_path: Path) -> None:
    (tmp_path / "empty-prefix").mkdir()
    spec = _spec(tmp_path, julia='[julia]\nversion = "1.5.3"\nprefix = "empty-prefix"\n')
    res = cas(tmp_path / "store", "depot", "build", str(spec), "--out", str(tmp_path / "o"))
    assert_one_line_error(res)
    assert res.code == InstallError.exit_code and "tools/install-julia" in res.err


def test_release_without_key_is_a_usage_error(tmp_path: Path) -> None:
    res = cas(tmp_path / "store", "depot", "build", str(_spec(tmp_path)), "--release", "x")
    assert_one_line_error(res)
    assert res.code == UsageError.exit_code


@pytest.mark.parametrize(("meta", "words"), [
    (None, "no readable meta.json"),
    ({"job": None}, "no job to run"),
    ({"job": {"command": "jobs/x.jl", "setup": []}}, "malformed"),
], ids=["no-meta", "no-job", "bad-job"])
def test_abcheck_without_a_job_says_how_to_give_one(tmp_path: Path, meta, words) -> None:
    build = tmp_path / "build"
    (build / "root").mkdir(parents=True)
    if meta is not None:
        (build / "meta.json").write_text(json.dumps(meta))
    res = cas(tmp_path / "store", "depot", "abcheck", str(build), "demo")
    assert_one_line_error(res)
    assert res.code == UsageError.exit_code and words in res.err, res.err


@needs_prefix
@needs_ns
def test_package_tarball_that_is_no_tar(tmp_path: Path) -> None:
    (tmp_path / "Tiny.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    spec = _spec(tmp_path, packages=GOOD["packages"].replace('path = "Tiny"',
                                                             'tarball = "Tiny.tar.gz"'))
    res = cas(tmp_path / "store", "-q", "depot", "build", str(spec), "--out",
              str(tmp_path / "out"))
    assert_one_line_error(res)
    assert res.code == PackageMismatch.exit_code and "tarball" in res.err, res.err


@needs_prefix
def test_cpu_lists_are_what_this_julia_reports() -> None:
    """versions.py's CPU and feature names are exactly `julia -C help`'s (LLVM 9)."""
    import subprocess

    from casstore.julia.versions import layout_for

    julia = Path(DEFAULT_PREFIX.format(version="1.5.3"), "bin/julia")
    proc = subprocess.run([str(julia), "-C", "help"], capture_output=True, text=True,
                          timeout=300)
    found: dict[str, set[str]] = {"cpus": set(), "features": set()}
    part = None
    for line in (proc.stdout + proc.stderr).splitlines():
        if "Available CPUs" in line:
            part = "cpus"
        elif "Available features" in line:
            part = "features"
        elif part and len(line.split()) >= 2 and line.split()[1] == "-":
            found[part].add(line.split()[0])
    lay = layout_for("1.5.3")
    assert found["cpus"] == set(lay.llvm_cpus) and "haswell" in found["cpus"]
    assert found["features"] == set(lay.llvm_features) and "rdrnd" in found["features"]


def test_later_julia_versions_are_described_but_refused() -> None:
    """1.9-1.12 are data in versions.py (pkgimages per CPU target, @depot from 1.11),
    refused until a build has run with them; 1.5 caches need no target at all."""
    from casstore.errors import UnsupportedJuliaVersion
    from casstore.julia.versions import UNTESTED_LAYOUTS, layout_for

    for version in ("1.9.4", "1.10.5", "1.11.1", "1.12.0"):
        with pytest.raises(UnsupportedJuliaVersion, match="untested"):
            layout_for(version)
    assert layout_for("1.5.3").precompile_env("haswell,-rdrnd") == {}
    lay = UNTESTED_LAYOUTS["1.10"]
    assert lay.precompile_env("haswell,-rdrnd") == {"JULIA_CPU_TARGET": "haswell,-rdrnd"}
    assert lay.cache_suffixes() == (".ji", ".so") and lay.compiled_subdir() == "compiled/v1.10"
    assert [m for m, v in sorted(UNTESTED_LAYOUTS.items()) if v.relocatable_caches] == \
        ["1.11", "1.12"]
