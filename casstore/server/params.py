"""Request path parameters turned into values, and the one-line text answers.

Every path parameter is matched against a strict pattern and turned into a value
(an ObjectId, a checked name, an int); file paths are built from those values
only, never from request text.
"""

from __future__ import annotations

import re

from aiohttp import web

from casstore.errors import StoreError
from casstore.format.names import check_ref_name
from casstore.format.objects import ObjectId
from casstore.server.metrics import MATCH_KEY

_HEX2 = re.compile(r"^[0-9a-f]{2}$")
_HEX62 = re.compile(r"^[0-9a-f]{62}$")
_REV_FILE = re.compile(r"^([0-9]{12})\.release$")


class BadRequest(Exception):
    """A malformed path parameter: 400, whatever it decodes to."""


def text(status: int, message: str, **headers: str) -> web.Response:
    """A one-line plain-text answer, not cacheable unless ``headers`` say otherwise."""
    return web.Response(status=status, text=message + "\n",
                        headers={"Cache-Control": "no-store", **headers})


def parse_oid(xx: str, rest: str) -> ObjectId:
    if not (_HEX2.match(xx) and _HEX62.match(rest)):
        raise BadRequest("malformed object path (objects/<2 hex>/<62 hex>, lower case)")
    return ObjectId(bytes.fromhex(xx + rest))


def parse_name(name: str) -> str:
    try:
        return check_ref_name(name)
    except StoreError:
        raise BadRequest("malformed name") from None


def parse_revision_file(file: str) -> int:
    m = _REV_FILE.match(file)
    if not m or int(m.group(1)) < 1:
        raise BadRequest("malformed release file name (12 digits, then .release)")
    return int(m.group(1))


def params(request: web.Request) -> dict[str, str]:
    """The path parameters, also of a request routed after merging slashes (whose own
    match is the 404 one)."""
    match = request.match_info
    return match if match.http_exception is None else request[MATCH_KEY]
