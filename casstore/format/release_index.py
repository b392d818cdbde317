"""The release index (docs/FORMAT.md §6.4): how a reader lists releases without readdir.

Two kinds of small JSON files that the publisher rewrites after each release
document: ``releases/_index.json`` (names) and ``releases/<name>/_index.json``
(revisions).  They are unsigned hints; every document read through them is still
verified.  This module only encodes and strictly decodes them, so the local
source, the HTTP source and the publisher share one definition.
"""

from __future__ import annotations

import json

from casstore.errors import FormatError, StoreError
from casstore.format.layout import MAX_RELEASE_INDEX
from casstore.format.names import check_ref_name

INDEX_FORMAT = "casstore-release-index"
INDEX_VERSION = 1


def encode_names(names: list[str]) -> bytes:
    doc = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "names": sorted(set(names))}
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


def encode_revisions(name: str, revisions: list[int]) -> bytes:
    doc = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "name": name,
           "revisions": sorted(set(revisions))}
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


def _doc(data: bytes, what: str) -> dict:
    if len(data) > MAX_RELEASE_INDEX:
        raise FormatError(f"{what} is too large ({len(data)} bytes)")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise FormatError(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise FormatError(f"{what} is not a casstore release index")
    if doc.get("version") != INDEX_VERSION:
        raise FormatError(f"{what}: unsupported release index version {doc.get('version')!r}")
    return doc


def decode_names(data: bytes, what: str = "release index") -> list[str]:
    """Release names, sorted and unique, each a valid name; anything else is FormatError."""
    names = _doc(data, what).get("names")
    if not isinstance(names, list):
        raise FormatError(f"{what} has no list of names")
    try:
        for n in names:
            check_ref_name(n)
    except StoreError:
        raise FormatError(f"{what} lists an invalid release name") from None
    if names != sorted(set(names)):
        raise FormatError(f"{what}: names are not sorted and unique")
    return names


def decode_revisions(data: bytes, name: str, what: str = "release index") -> list[int]:
    """Revisions of ``name``, strictly ascending integers >= 1."""
    doc = _doc(data, what)
    if doc.get("name") != name:
        raise FormatError(f"{what} is for release {doc.get('name')!r}, not {name!r}")
    revs = doc.get("revisions")
    if not isinstance(revs, list) or not all(type(r) is int and r >= 1 for r in revs):
        raise FormatError(f"{what} has a bad list of revisions")
    if any(a >= b for a, b in zip(revs, revs[1:], strict=False)):
        raise FormatError(f"{what}: revisions are not strictly ascending")
    return revs
