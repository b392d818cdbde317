"""Compose one depot release from per-variant builds made on separate machines.

A builder of one CPU level runs ``cas depot build SPEC --variant L --release NAME``
with its own builder key: it signs a *part release* ``NAME.part-L`` holding the
common tree and the level's overlay, and pushes it to ``cas serve`` with a token.
Where the release key lives, :func:`compose` reads every part of NAME, checks that
they are complete, signed by a trusted builder key, and built from the same inputs
(same input key, same common tree, the spec's cpu target for their level), and only
then signs NAME with every level.  Anything missing or different is named in one
error, and nothing is published.
"""

from __future__ import annotations

from dataclasses import dataclass

from casstore.errors import CasError, ComposeRefused, NotFound
from casstore.releases.release import Release, load_verified

PART_SEP = ".part-"


def part_name(release: str, level: str) -> str:
    """The part release one builder of `level` signs for `release`."""
    return f"{release}{PART_SEP}{level}"


def part_meta(build_meta: dict, release: str, level: str) -> dict:
    """What compose checks and carries over, from the builder's meta.json."""
    v = build_meta["variants"][level]
    return {"part_of": release, "variant": level, "cpu_target": v["cpu_target"],
            "variant_key": v["key"], "input_key": build_meta["input_key"],
            "julia_version": build_meta["julia_version"],
            "environment": build_meta["environment"],
            "spec_variants": build_meta["spec_variants"],
            "spec_baseline": build_meta["spec_baseline"],
            "packages": [p["name"] for p in build_meta.get("packages", [])],
            "trace": v.get("trace", {})}


@dataclass(frozen=True)
class Composed:
    """The checked parts of one release, ready to sign."""

    root: str
    variants: dict[str, str]
    baseline: str
    meta: dict


def _load_parts(store, release: str, builder_keys: list[str]) -> tuple[dict[str, Release],
                                                                          list[str]]:
    """Every level's newest part that verifies, and a line for each one that does not."""
    parts, problems = {}, []
    for name in sorted(store.release_names()):
        if not name.startswith(release + PART_SEP):
            continue
        level = name[len(release + PART_SEP):]
        try:
            parts[level] = load_verified(store, name, builder_keys, None)
        except (CasError, NotFound) as exc:
            problems.append(f"{name}: {exc}")
    return parts, problems


def _part_problems(level: str, rel: Release, release: str) -> list[str]:
    """A part must say it is NAME's part for its level and hold exactly that overlay."""
    m = rel.meta
    if m.get("part_of") != release or m.get("variant") != level:
        return [f"{rel.name}: its metadata names part {m.get('part_of')!r}/"
                f"{m.get('variant')!r}, not {release!r}/{level!r}"]
    if set(rel.variants) != {level}:
        return [f"{rel.name}: holds overlays {sorted(rel.variants)}, not just {level!r}"]
    return []


def _disagreements(parts: dict[str, Release], what: str, value) -> list[str]:
    """`what` (read by `value`) differing between parts: name each level's value."""
    seen: dict[str, list[str]] = {}
    for level, rel in sorted(parts.items()):
        seen.setdefault(str(value(rel)), []).append(level)
    if len(seen) <= 1:
        return []
    return [f"{what} differs: " + "; ".join(f"{', '.join(lv)} {v[:16]}"
                                             for v, lv in seen.items())]


def compose(store, release: str, builder_keys: list[str]) -> Composed:
    """Check the parts of `release` in `store`; refuse with every problem named."""
    if not builder_keys:
        raise ComposeRefused("no builder key given: parts are verified against them")
    parts, problems = _load_parts(store, release, builder_keys)
    if not parts and not problems:
        raise ComposeRefused(f"no part releases {part_name(release, 'LEVEL')} in the store")
    for level, rel in parts.items():
        problems += _part_problems(level, rel, release)
    problems += _disagreements(parts, "the spec's variants",
                               lambda r: sorted(r.meta.get("spec_variants", {}).items()))
    problems += _disagreements(parts, "input key", lambda r: r.meta.get("input_key"))
    problems += _disagreements(parts, "common tree", lambda r: r.root)
    problems += _disagreements(parts, "julia version", lambda r: r.meta.get("julia_version"))
    expected = next(iter(parts.values())).meta.get("spec_variants", {}) if parts else {}
    for level, target in expected.items():
        if level not in parts:
            problems.append(f"variant {level}: no verified {part_name(release, level)}")
        elif parts[level].meta.get("cpu_target") != target:
            problems.append(f"variant {level}: built for {parts[level].meta.get('cpu_target')!r}"
                            f", the spec says {target!r}")
    extra = sorted(set(parts) - set(expected))
    if extra and expected:
        problems.append(f"parts for levels the spec does not have: {', '.join(extra)}")
    if problems:
        raise ComposeRefused(f"{release} not composed: " + " | ".join(problems))
    first = next(iter(parts.values()))
    meta = {"julia_version": first.meta.get("julia_version"),
            "environment": first.meta.get("environment"),
            "variant_targets": dict(expected), "packages": first.meta.get("packages", []),
            "input_key": first.meta.get("input_key"),
            "composed_from": {lv: f"{r.name}@{r.revision}" for lv, r in sorted(parts.items())}}
    crashed = {lv: r.meta["trace"]["note"] for lv, r in parts.items()
               if r.meta.get("trace", {}).get("ok") is False}
    if crashed:
        meta["trace_crashed"] = crashed
    return Composed(first.root, {lv: parts[lv].variants[lv] for lv in expected},
                    first.meta.get("spec_baseline") or next(iter(expected)), meta)
