"""HTTP caching semantics shared by every cacheable route of ``cas serve``.

Validators (ETag, Last-Modified), the conditional request headers that use them
(If-None-Match, If-Modified-Since, If-Range), single byte ranges and the
Cache-Control values, in one place so that objects, layout files and Pkg
tarballs answer a revalidating proxy the same way nginx would (RFC 9110 §13).
"""

from __future__ import annotations

import re
from email.utils import formatdate
from functools import lru_cache

from aiohttp import hdrs, web

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = -1  # a max_age meaning "public, no-cache": store, but ask before each use
UNSATISFIABLE = (-1, -1)
_RANGE = re.compile(r"^bytes=([0-9]{0,18})-([0-9]{0,18})$")


def cache_control(max_age: int) -> str:
    """The Cache-Control value for a max-age, or for :data:`REVALIDATE`."""
    return "public, no-cache" if max_age == REVALIDATE else f"public, max-age={max_age}"


def http_date(seconds: float) -> str:
    """An IMF-fixdate (``Last-Modified``)."""
    return _http_date(int(seconds))


@lru_cache(maxsize=4096)
def _http_date(seconds: int) -> str:
    return formatdate(seconds, usegmt=True)


def etag_matches(header: str | None, etag: str) -> bool:
    """Weak comparison of an If-None-Match list with our ETag (RFC 9110 §13.1.2)."""
    if header is None:
        return False
    for item in header.split(","):
        item = item.strip()
        if item == "*" or item.removeprefix("W/") == etag:
            return True
    return False


def not_modified(request: web.BaseRequest, etag: str, mtime: float | None) -> bool:
    """True when the client's copy is current: If-None-Match when sent (it takes
    precedence, RFC 9110 §13.2.2), else If-Modified-Since against ``mtime``."""
    inm = request.headers.get(hdrs.IF_NONE_MATCH)
    if inm is not None:
        return etag_matches(inm, etag)
    if mtime is None or hdrs.IF_MODIFIED_SINCE not in request.headers:
        return False
    since = request.if_modified_since  # None when unparseable: then ignored
    return since is not None and int(mtime) <= since.timestamp()


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(offset, count) for a single-range ``Range`` header, UNSATISFIABLE, or None to
    send the whole body (no header, several ranges, or a header we do not parse:
    RFC 9110 lets a server ignore Range)."""
    if header is None:
        return None
    m = _RANGE.match(header.strip())
    if not m or m.groups() == ("", ""):
        return None
    first, last = m.groups()
    if first == "":  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            return UNSATISFIABLE
        n = min(n, size)
        return size - n, n
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid: ignored
    if start >= size:
        return UNSATISFIABLE
    end = min(end, size - 1)
    return start, end - start + 1


def requested_range(request: web.BaseRequest, etag: str, size: int) -> tuple[int, int] | None:
    """The Range to honour: only when If-Range is absent or names our ETag."""
    if_range = request.headers.get(hdrs.IF_RANGE)
    if if_range is not None and if_range.strip() != etag:
        return None
    return byte_range(request.headers.get(hdrs.RANGE), size)
