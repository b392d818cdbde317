"""The read routes of the store layout (docs/FORMAT.md §10.2), GET and HEAD.

``objects/xx/62hex``, ``releases/_index.json``, ``releases/NAME/_index.json``,
``releases/NAME/REV.release``, ``refs/NAME`` and ``casstore.json``, answered as
nginx serving the folder would (validators, conditional requests, Range on
objects), so that a client cannot tell ``cas serve`` from a static server.
Reads open no database: each is a file opened without following links.
"""

from __future__ import annotations

import logging

import blake3
from aiohttp import web

from casstore.errors import CasError, ObjectCorrupt
from casstore.fileio.safeio import open_regular, read_regular_stat
from casstore.format.layout import (
    FORMAT_FILE,
    MAX_FORMAT_DOC,
    MAX_REF,
    MAX_RELEASE_DOC,
    MAX_RELEASE_INDEX,
    MAX_STORED_SIZE,
    names_index_relpath,
    ref_relpath,
    release_relpath,
    revisions_index_relpath,
)
from casstore.server.filesend import file_response
from casstore.server.httpcache import IMMUTABLE, REVALIDATE, cache_control, http_date, not_modified
from casstore.server.params import (
    BadRequest,
    params,
    parse_name,
    parse_oid,
    parse_revision_file,
    text,
)
from casstore.server.storeservice import STORE, StoreService

log = logging.getLogger(__name__)
_OBJECT_HEADERS = {"Cache-Control": IMMUTABLE, "Content-Type": "application/octet-stream"}
_OBJECT_404 = {"Cache-Control": "public, max-age=10"}


async def get_object(request: web.Request) -> web.StreamResponse:
    try:
        oid = parse_oid(params(request)["xx"], params(request)["rest"])
    except BadRequest as exc:
        return text(400, str(exc))
    svc: StoreService = request.app[STORE]
    h = oid.hex  # the path is made of the parsed id only
    try:
        opened = open_regular(f"{svc.root}/objects/{h[:2]}/{h[2:]}", MAX_STORED_SIZE,
                              f"object {oid}", corrupt=ObjectCorrupt)
    except CasError as exc:
        log.error("not serving %s", exc)
        return text(500, "object damaged on the server")
    if opened is None:
        return text(404, "no such object", **_OBJECT_404)
    fd, st = opened
    return file_response(request, fd, st, f'"{oid}"', _OBJECT_HEADERS)


def small_file(request: web.Request, relpath: str, limit: int, max_age: int,
               content_type: str) -> web.Response:
    """A small layout file with validators; ``max_age`` :data:`REVALIDATE` for the
    release index files, which decide what a mount picks and so must never be served
    stale by a proxy (FORMAT §10.2)."""
    svc: StoreService = request.app[STORE]
    try:
        got = read_regular_stat(svc.root / relpath, limit, relpath, corrupt=ObjectCorrupt)
    except CasError as exc:
        log.error("not serving %s: %s", relpath, exc)
        return text(500, "file damaged on the server")
    if got is None:
        return text(404, "not found", **{"Cache-Control": cache_control(min(max_age, 10))})
    data, st = got
    etag = f'"{blake3.blake3(data).hexdigest()[:32]}"'
    headers = {"Cache-Control": cache_control(max_age), "ETag": etag,
               "Last-Modified": http_date(st.st_mtime)}
    if not_modified(request, etag, st.st_mtime):
        return web.Response(status=304, headers=headers)
    return web.Response(body=data, content_type=content_type, headers=headers)


async def get_names_index(request: web.Request) -> web.StreamResponse:
    return small_file(request, names_index_relpath(), MAX_RELEASE_INDEX, REVALIDATE,
                      "application/json")


async def get_release_file(request: web.Request) -> web.StreamResponse:
    try:
        name = parse_name(params(request)["name"])
        file = params(request)["file"]
        if file == "_index.json":
            return small_file(request, revisions_index_relpath(name), MAX_RELEASE_INDEX,
                              REVALIDATE, "application/json")
        rev = parse_revision_file(file)
    except BadRequest as exc:
        return text(400, str(exc))
    return small_file(request, release_relpath(name, rev), MAX_RELEASE_DOC,
                      request.app[STORE].cfg.max_age, "application/json")


async def get_ref(request: web.Request) -> web.StreamResponse:
    try:
        name = parse_name(params(request)["name"])
    except BadRequest as exc:
        return text(400, str(exc))
    return small_file(request, ref_relpath(name), MAX_REF, request.app[STORE].cfg.max_age,
                      "text/plain")


async def get_format(request: web.Request) -> web.StreamResponse:
    return small_file(request, FORMAT_FILE, MAX_FORMAT_DOC,
                      request.app[STORE].cfg.format_max_age, "application/json")
