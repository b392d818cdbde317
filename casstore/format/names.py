"""Name rules for refs and releases, shared by writers, readers and (later) the server.

Ref and release names become path components on disk and in URLs, so they are kept
boring: a strict pattern checked wherever a name enters from outside.
"""

from __future__ import annotations

import re

from casstore.errors import StoreError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def check_ref_name(name: str) -> str:
    """Return ``name`` if it is a valid ref or release name, else raise StoreError."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise StoreError(f"invalid name {name!r} (letters, digits and . _ + - only)")
    return name
