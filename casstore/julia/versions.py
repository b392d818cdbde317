"""Everything that depends on the Julia version, in one place.

Julia changes where precompile output lives and what it depends on between
releases (1.5: `compiled/v1.5/*.ji` holding no native code; 1.9: pkgimages
with native `.so` next to the `.ji`, compiled for `JULIA_CPU_TARGET`; 1.11:
relocatable caches with `@depot` paths).  The builder asks this module instead
of hard-coding paths, so supporting a new release is an addition here plus
whatever new stage it needs.

Only 1.5 is tested (the one Julia that installs on the build machines).  The
1.9-1.12 entries in UNTESTED_LAYOUTS write down what those releases change
(docs/JULIA.md §6b); :func:`layout_for` refuses them until a build has run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from casstore.errors import BadCpuTarget, UnknownVariant, UnsupportedJuliaVersion

TRIPLET = "x86_64-linux-gnu"


@dataclass(frozen=True)
class JuliaLayout:
    """Paths (relative to a Julia prefix or depot) and behaviour of one Julia minor."""

    minor: str
    libdir: str
    sysimage: str
    stock_sysimage: str
    stdlib: str
    compiled_dir: str
    default_env: str
    pkgimages: bool  # native code in compiled/ (.so beside .ji), checked against the CPU
    relocatable_caches: bool  # cache headers name sources as @depot/..., not absolute
    precompile_pidlock: bool = False  # `<cache>.pidfile` locks while precompiling
    cpu_targets: dict[str, str] = field(default_factory=dict)
    llvm_cpus: frozenset[str] = frozenset()
    llvm_features: frozenset[str] = frozenset()

    def compiled_subdir(self) -> str:
        """Depot-relative folder of precompile caches (variant-specific content)."""
        return self.compiled_dir

    def precompile_env(self, cpu_target: str) -> dict[str, str]:
        """Environment of the run that writes a level's caches.

        With pkgimages the native code in each cache is compiled for
        JULIA_CPU_TARGET and rejected on a CPU none of its targets fits, so the
        caches of a level are written with the level's target; 1.5 caches hold
        no native code and need nothing.
        """
        return {"JULIA_CPU_TARGET": cpu_target} if self.pkgimages else {}

    def cache_suffixes(self) -> tuple[str, ...]:
        """File suffixes of one package's cache (all of them belong in the overlay)."""
        return (".ji", ".so") if self.pkgimages else (".ji",)


# LLVM 9 (Julia 1.5) knows no `x86-64-v3` CPU name.  `haswell,-rdrnd` is the
# level Julia's own multi-target builds use for AVX2 machines (x86-64-v3 has
# no RDRAND requirement); `skylake-avx512,-rdrnd` likewise for v4.
_CPU_TARGETS_LLVM9 = {
    "x86-64": "x86-64",
    "x86-64-v2": "nehalem",
    "x86-64-v3": "haswell,-rdrnd",
    "x86-64-v4": "skylake-avx512,-rdrnd",
}

# What `julia -C help` lists for Julia 1.5.3 (LLVM 9).  LLVM only *warns* about an
# unknown CPU or feature and then builds a generic image, so the spec is checked
# against these lists before any build starts.
_LLVM9_X86_CPUS = frozenset("""
amdfam10 athlon athlon-4 athlon-fx athlon-mp athlon-tbird athlon-xp athlon64 athlon64-sse3
atom barcelona bdver1 bdver2 bdver3 bdver4 bonnell broadwell btver1 btver2 c3 c3-2
cannonlake cascadelake cooperlake core-avx-i core-avx2 core2 corei7 corei7-avx generic
geode goldmont goldmont-plus haswell i386 i486 i586 i686 icelake-client icelake-server
ivybridge k6 k6-2 k6-3 k8 k8-sse3 knl knm lakemont nehalem nocona opteron opteron-sse3
penryn pentium pentium-m pentium-mmx pentium2 pentium3 pentium3m pentium4 pentium4m
pentiumpro prescott sandybridge silvermont skx skylake skylake-avx512 slm tremont westmere
winchip-c6 winchip2 x86-64 yonah znver1 znver2
""".split())
_LLVM9_X86_FEATURES = frozenset("""
16bit-mode 32bit-mode 3dnow 3dnowa 64bit 64bit-mode adx aes avx avx2 avx512bf16
avx512bitalg avx512bw avx512cd avx512dq avx512er avx512f avx512ifma avx512pf avx512vbmi
avx512vbmi2 avx512vl avx512vnni avx512vp2intersect avx512vpopcntdq bmi bmi2 branchfusion
cldemote clflushopt clwb clzero cmov cx16 cx8 enqcmd ermsb f16c false-deps-lzcnt-tzcnt
false-deps-popcnt fast-11bytenop fast-15bytenop fast-bextr fast-gather fast-hops
fast-lzcnt fast-partial-ymm-or-zmm-write fast-scalar-fsqrt fast-scalar-shift-masks
fast-shld-rotate fast-variable-shuffle fast-vector-fsqrt fast-vector-shift-masks fma fma4
fsgsbase fxsr gfni idivl-to-divb idivq-to-divl invpcid lea-sp lea-uses-ag lwp lzcnt
macrofusion merge-to-threeway-branch mmx movbe movdir64b movdiri mpx mwaitx nopl
pad-short-functions pclmul pconfig pku popcnt prefer-256-bit prefetchwt1 prfchw ptwrite
rdpid rdrnd rdseed retpoline retpoline-external-thunk retpoline-indirect-branches
retpoline-indirect-calls rtm sahf sgx sha shstk slow-3ops-lea slow-incdec slow-lea
slow-pmaddwd slow-pmulld slow-shld slow-two-mem-ops slow-unaligned-mem-16
slow-unaligned-mem-32 soft-float sse sse-unaligned-mem sse2 sse3 sse4.1 sse4.2 sse4a ssse3
tbm vaes vpclmulqdq waitpkg wbnoinvd x87 xop xsave xsavec xsaveopt xsaves
""".split())

LAYOUTS: dict[str, JuliaLayout] = {
    "1.5": JuliaLayout(
        minor="1.5",
        libdir=f"lib/{TRIPLET}",
        sysimage=f"lib/{TRIPLET}/julia/sys.so",
        stock_sysimage=f"lib/{TRIPLET}/julia/sys-stock.so",
        stdlib="share/julia/stdlib/v1.5",
        compiled_dir="compiled/v1.5",
        default_env="v1.5",
        pkgimages=False,
        relocatable_caches=False,
        cpu_targets=_CPU_TARGETS_LLVM9,
        llvm_cpus=_LLVM9_X86_CPUS,
        llvm_features=_LLVM9_X86_FEATURES,
    ),
}


def _official(minor: str, relocatable: bool) -> JuliaLayout:
    """An official julialang.org binary of `minor` (not a Debian package): libjulia in
    lib/, the image in lib/julia/.  Written from the release notes; untested here."""
    return JuliaLayout(
        minor=minor, libdir="lib", sysimage="lib/julia/sys.so",
        stock_sysimage="lib/julia/sys-stock.so", stdlib=f"share/julia/stdlib/v{minor}",
        compiled_dir=f"compiled/v{minor}", default_env=f"v{minor}", pkgimages=True,
        relocatable_caches=relocatable, precompile_pidlock=True,
        cpu_targets=_CPU_TARGETS_LLVM9)


# What 1.9-1.12 change (see docs/JULIA.md §6b).  Not in LAYOUTS: no build has run
# with them, and their `julia -C help` lists (llvm_cpus, llvm_features) are unknown.
UNTESTED_LAYOUTS: dict[str, JuliaLayout] = {
    "1.9": _official("1.9", relocatable=False),
    "1.10": _official("1.10", relocatable=False),
    "1.11": _official("1.11", relocatable=True),
    "1.12": _official("1.12", relocatable=True),
}


_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
# Julia's own words inside a target (processor.cpp): not LLVM features.
_JULIA_TARGET_FLAGS = frozenset({"clone_all", "opt_size", "min_size"})
_BASE_FLAG = re.compile(r"^base\(\d+\)$")


def layout_for(version: str) -> JuliaLayout:
    """Layout for a full version string like "1.5.3"."""
    if not _VERSION.match(version):
        raise UnsupportedJuliaVersion(f"Julia version {version!r} is not of the form X.Y.Z")
    minor = ".".join(version.split(".")[:2])
    if minor in UNTESTED_LAYOUTS:
        raise UnsupportedJuliaVersion(f"Julia {version} is described in versions.py but untested "
                                      f"(see docs/JULIA.md); known: {', '.join(sorted(LAYOUTS))}")
    try:
        return LAYOUTS[minor]
    except KeyError:
        raise UnsupportedJuliaVersion(f"Julia {version} is not supported "
                                      f"(known: {', '.join(sorted(LAYOUTS))})") from None


def cpu_target_for(layout: JuliaLayout, level: str) -> str:
    """The `--cpu-target` string for a micro-architecture level name."""
    try:
        return layout.cpu_targets[level]
    except KeyError:
        raise UnknownVariant(f"variant {level!r} is not a CPU level Julia {layout.minor} "
                             f"knows (known: {', '.join(layout.cpu_targets)})") from None


def check_cpu_target(layout: JuliaLayout, target: str) -> None:
    """Refuse a `--cpu-target` string naming a CPU or feature LLVM does not know.

    Syntax (Julia's processor.cpp): targets separated by ';', each a CPU name
    followed by ',+feature', ',-feature', 'clone_all', 'opt_size', 'min_size' or
    'base(N)'.
    """
    if not target.strip():
        raise BadCpuTarget("cpu_target is empty")
    for one in target.split(";"):
        name, *flags = one.split(",")
        if name not in layout.llvm_cpus:
            raise BadCpuTarget(f"cpu_target {target!r}: {name!r} is not a CPU LLVM knows "
                               f"in Julia {layout.minor} (see `julia -C help`)")
        for flag in flags:
            if flag in _JULIA_TARGET_FLAGS or _BASE_FLAG.match(flag):
                continue
            if flag[:1] not in ("+", "-") or flag[1:] not in layout.llvm_features:
                raise BadCpuTarget(f"cpu_target {target!r}: {flag!r} is not +feature or "
                                   f"-feature with a feature LLVM knows (see `julia -C help`)")
