"""Julia's version ranges, as Pkg 1.5 reads them from a registry.

Two syntaxes meet here.  A package's Project.toml writes ``[compat]`` in *semver*
notation (``"0.12, 1"`` means ``[0.12.0, 0.13) ∪ [1.0.0, 2)``).  A registry's
Compat.toml writes the same sets as *version ranges* (``["0.12.0-0.12", "1"]``),
and both Deps.toml and Compat.toml are keyed by ranges over the package's own
versions (the "compressed" format).  Pkg parses registry ranges literally
(``VersionSpec(s)``), so a Project ``"1.2"`` copied verbatim would silently mean
"1.2.x only".  This module converts exactly as Pkg 1.5's ``semver_spec`` and
prints exactly as its ``VersionRange`` printing (``Pkg/src/versions.jl``), then
compresses per-version tables and checks the compression by decompressing it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from casstore.errors import RegistryError

Version = tuple[int, int, int]
_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)$")


def parse_version(text: str) -> Version:
    """``1.2.3`` or ``v1.2.3``; pre-releases and build tags are refused (ranges ignore them)."""
    m = _VERSION_RE.match(text.strip())
    if not m:
        raise RegistryError(f"not a plain version number: {text!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def vstr(v: Version) -> str:
    return f"{v[0]}.{v[1]}.{v[2]}"


@dataclass(frozen=True)
class Bound:
    """A version bound with ``n`` significant parts (Pkg's VersionBound)."""

    t: tuple[int, int, int]
    n: int

    @classmethod
    def of(cls, *parts: int) -> Bound:
        padded = tuple(parts) + (0,) * (3 - len(parts))
        return cls(padded, len(parts))  # type: ignore[arg-type]

    @classmethod
    def parse(cls, text: str) -> Bound:
        if text == "*":
            return cls.of()
        parts = text.split(".")
        if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
            raise RegistryError(f"invalid version bound {text!r}")
        return cls.of(*(int(p) for p in parts))

    def le_upper(self, v: Version) -> bool:
        """v ≲ self as an upper bound."""
        return self.n == 0 or v[:self.n] <= self.t[:self.n]

    def ge_lower(self, v: Version) -> bool:
        """self ≲ v as a lower bound."""
        return self.n == 0 or v[:self.n] >= self.t[:self.n]

    def __str__(self) -> str:
        return ".".join(str(x) for x in self.t[:self.n])


def _isless_ll(a: Bound, b: Bound) -> bool:
    for i in range(min(a.n, b.n)):
        if a.t[i] != b.t[i]:
            return a.t[i] < b.t[i]
    return a.n < b.n


def _isless_uu(a: Bound, b: Bound) -> bool:
    for i in range(min(a.n, b.n)):
        if a.t[i] != b.t[i]:
            return a.t[i] < b.t[i]
    return a.n > b.n


def _isjoinable(up: Bound, lo: Bound) -> bool:
    if up.n == 0 and lo.n == 0:
        return True
    if up.n == lo.n:
        for i in range(up.n - 1):
            if up.t[i] != lo.t[i]:
                return up.t[i] > lo.t[i]
        return not up.t[up.n - 1] < lo.t[up.n - 1] - 1
    for i in range(min(up.n, lo.n)):
        if up.t[i] != lo.t[i]:
            return up.t[i] > lo.t[i]
    return True


@dataclass(frozen=True)
class Range:
    """Pkg's VersionRange: ``lo ≲ v ≲ hi``; equal padded bounds collapse to ``hi``."""

    lo: Bound
    hi: Bound

    @classmethod
    def make(cls, lo: Bound, hi: Bound) -> Range:
        return cls(hi, hi) if lo.t == hi.t else cls(lo, hi)

    @classmethod
    def parse(cls, text: str) -> Range:
        """Registry syntax: ``1.2``, ``0.3-0.5``, ``1.2.1-1``, ``*`` (Pkg's VersionRange(s))."""
        lo, sep, hi = text.strip().partition("-")
        lo_b = Bound.parse(lo.strip().lstrip("v"))
        hi_b = Bound.parse(hi.strip().lstrip("v")) if sep else lo_b
        return cls.make(lo_b, hi_b)

    def contains(self, v: Version) -> bool:
        return self.lo.ge_lower(v) and self.hi.le_upper(v)

    def empty(self) -> bool:
        for i in range(min(self.lo.n, self.hi.n)):
            if self.lo.t[i] != self.hi.t[i]:
                return self.lo.t[i] > self.hi.t[i]
        return False

    def __str__(self) -> str:
        m, n = self.lo.n, self.hi.n
        if (m, n) == (0, 0):
            return "*"
        if m == 0:
            return f"0-{'.'.join(map(str, self.hi.t))}"
        if n == 0:
            return f"{'.'.join(map(str, self.lo.t))}-*"
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


def union(ranges: list[Range]) -> list[Range]:
    """Pkg's ``union!``: sort, drop empty ranges, join touching ones."""
    rs = sorted(ranges, key=_SortKey)
    rs = [r for r in rs if not r.empty()]
    if not rs:
        return []
    out: list[Range] = []
    lo, up = rs[0].lo, rs[0].hi
    for r in rs[1:]:
        if _isjoinable(up, r.lo):
            if _isless_uu(up, r.hi):
                up = r.hi
            continue
        out.append(Range.make(lo, up))
        lo, up = r.lo, r.hi
    last = Range.make(lo, up)
    if not last.empty():
        out.append(last)
    return out


class _SortKey:
    """Sort order of Pkg's union!: by lower bound, then by upper bound."""

    def __init__(self, r: Range) -> None:
        self.r = r

    def __lt__(self, other: _SortKey) -> bool:
        a, b = self.r, other.r
        return _isless_ll(a.lo, b.lo) or (a.lo == b.lo and _isless_uu(a.hi, b.hi))


_NUM = r"v?([0-9]+?)(?:\.([0-9]+?))?(?:\.([0-9]+?))?"
_SEMVER = re.compile(rf"^([~^]?)?{_NUM}$")
_INEQ = re.compile(rf"^((?:≥\s*)|(?:>=\s*)|(?:=\s*)|(?:<\s*)|(?:=\s*))v?{_NUM}$")
_HYPHEN = re.compile(rf"^[\s]*{_NUM}[\s]*?\s-\s[\s]*?{_NUM}[\s]*$")


def _parts(groups: tuple) -> tuple[list[int], int]:
    nums = [int(g) for g in groups if g is not None]
    return nums + [0] * (3 - len(nums)), len(nums)


def _semver(m: re.Match) -> Range:
    (major, minor, patch), n = _parts(m.groups()[1:])
    if n == 3 and major == minor == patch == 0:
        raise RegistryError('invalid version "0.0.0"')
    v0 = Bound((major, minor, patch), 3)
    if m.group(1) in ("", "^", None):
        if major != 0:
            return Range.make(v0, Bound.of(major))
        if minor != 0:
            return Range.make(v0, Bound.of(major, minor))
        return Range.make(v0, Bound.of(*([0, 0, patch][:n] if n == 3 else [0] * n)))
    return Range.make(v0, Bound.of(major, minor) if n >= 2 else Bound.of(major))


def _inequality(m: re.Match) -> Range:
    typ = m.group(1).strip()
    (major, minor, patch), n = _parts(m.groups()[1:])
    if n == 3 and major == minor == patch == 0:
        raise RegistryError('invalid version "0.0.0"')
    v = Bound((major, minor, patch), 3)
    if typ == "<":
        if patch == 0:
            hi = Bound.of(major - 1) if minor == 0 else Bound.of(major, minor - 1)
        else:
            hi = Bound.of(major, minor, patch - 1)
        return Range.make(Bound.of(0, 0, 0), hi)
    if typ == "=":
        return Range.make(v, v)
    return Range.make(v, Bound.of())  # >= and ≥


def _hyphen(m: re.Match) -> Range:
    g = m.groups()
    lo = Bound.of(*(int(x) for x in g[0:3] if x is not None))
    hi = Bound.of(*(int(x) for x in g[3:6] if x is not None))
    return Range.make(lo, hi)


def semver_spec(text: str) -> list[Range]:
    """A Project.toml ``[compat]`` value as ranges, exactly as Pkg 1.5 reads it."""
    ranges = []
    for part in (p.strip() for p in text.strip().split(",")):
        for regex, fn in ((_SEMVER, _semver), (_INEQ, _inequality), (_HYPHEN, _hyphen)):
            m = regex.match(part)
            if m:
                ranges.append(fn(m))
                break
        else:
            raise RegistryError(f"invalid version specifier: {text!r}")
    return union(ranges)


CompatValue = str | list[str]


def registry_compat(text: str) -> CompatValue:
    """Project compat -> Compat.toml value: one range as a string, several as a list."""
    ranges = [str(r) for r in semver_spec(text)]
    if not ranges:
        raise RegistryError(f"compat {text!r} allows no version at all")
    return ranges[0] if len(ranges) == 1 else ranges


def _canon(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


# -- the compressed per-version format of Deps.toml and Compat.toml ----------------
def _lower(prev: Version | None, v: Version) -> Bound:
    if prev is None:
        return Bound.of(0)
    for n in (1, 2, 3):
        b = Bound.of(*v[:n])
        if not b.ge_lower(prev):
            return b
    raise AssertionError("versions are not strictly increasing")


def _upper(nxt: Version | None, v: Version) -> Bound:
    if nxt is None:
        return Bound.of(v[0])
    for n in (1, 2, 3):
        b = Bound.of(*v[:n])
        if not b.le_upper(nxt):
            return b
    raise AssertionError("versions are not strictly increasing")


def compress(data: dict[Version, dict[str, object]]) -> dict[str, dict[str, object]]:
    """Per-version tables -> ``{range: {key: value}}`` as registries store them.

    Each (key, value) pair covers the runs of consecutive versions that have it;
    every run becomes one range whose bounds are as short as the neighbouring
    versions allow (``"0-0.5"``, ``"1.2.1-1"``).  The result is decompressed again
    and compared, so a wrong range can never be written.
    """
    versions = sorted(data)
    pairs: dict[tuple[str, object], list[int]] = {}
    for i, v in enumerate(versions):
        for key, value in data[v].items():
            pairs.setdefault((key, _canon(value)), []).append(i)
    out: dict[str, dict[str, object]] = {}
    order: dict[str, tuple] = {}
    for (key, value), idxs in pairs.items():
        runs: list[list[int]] = []
        for i in idxs:
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        for run in runs:
            a, b = run[0], run[-1]
            prev = versions[a - 1] if a > 0 else None
            nxt = versions[b + 1] if b + 1 < len(versions) else None
            rng = Range.make(_lower(prev, versions[a]), _upper(nxt, versions[b]))
            label = str(rng)
            out.setdefault(label, {})[key] = list(value) if isinstance(value, tuple) else value
            order[label] = (versions[a], versions[b])
    result = {k: dict(sorted(out[k].items())) for k in sorted(out, key=lambda k: order[k])}
    if decompress(result, versions) != {v: d for v, d in data.items() if d}:
        raise AssertionError("version-range compression does not round-trip")
    return result


def decompress(compressed: dict[str, dict[str, object]],
               versions: list[Version]) -> dict[Version, dict[str, object]]:
    """``{range: {key: value}}`` -> per-version tables, as Pkg's load_package_data."""
    out: dict[Version, dict[str, object]] = {}
    for label, table in compressed.items():
        rng = Range.parse(label)
        for v in versions:
            if rng.contains(v):
                row = out.setdefault(v, {})
                for key, value in table.items():
                    if key in row:
                        raise RegistryError(f"overlapping ranges for {key} at {vstr(v)}")
                    row[key] = value
    return out
