"""Everything that depends on the Julia version, in one place.

Julia changes where precompile output lives and what it depends on between
releases (1.5: `compiled/v1.5/*.ji` holding no native code; 1.9: pkgimages
with native `.so` next to the `.ji`; 1.11: relocatable caches).  The builder
asks this module instead of hard-coding paths, so supporting a new release is
an addition here plus whatever new stage it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    pkgimages: bool
    relocatable_caches: bool
    cpu_targets: dict[str, str] = field(default_factory=dict)

    def compiled_subdir(self) -> str:
        """Depot-relative folder of precompile caches (variant-specific content)."""
        return self.compiled_dir


# LLVM 9 (Julia 1.5) knows no `x86-64-v3` CPU name.  `haswell,-rdrnd` is the
# level Julia's own multi-target builds use for AVX2 machines (x86-64-v3 has
# no RDRAND requirement); `skylake-avx512,-rdrnd` likewise for v4.
_CPU_TARGETS_LLVM9 = {
    "x86-64": "x86-64",
    "x86-64-v2": "nehalem",
    "x86-64-v3": "haswell,-rdrnd",
    "x86-64-v4": "skylake-avx512,-rdrnd",
}

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
    ),
}


def layout_for(version: str) -> JuliaLayout:
    """Layout for a full version string like "1.5.3"."""
    minor = ".".join(version.split(".")[:2])
    try:
        return LAYOUTS[minor]
    except KeyError:
        raise ValueError(f"Julia {version} is not supported (known: {sorted(LAYOUTS)})") from None


def cpu_target_for(layout: JuliaLayout, level: str) -> str:
    """The `--cpu-target` string for a micro-architecture level name."""
    try:
        return layout.cpu_targets[level]
    except KeyError:
        msg = f"no cpu target known for level {level!r} on Julia {layout.minor}"
        raise ValueError(msg) from None
