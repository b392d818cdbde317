"""The write routes of ``cas serve`` (push, docs/HTTP.md), each behind a bearer token.

A batch "which of these do you lack", PUT of an object and PUT of a release.
Bodies are read with a size limit and a deadline, so a client that dribbles a
body cannot hold a connection; the checks themselves live in
:mod:`casstore.server.storeservice`.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import hdrs, web

from casstore.errors import CasError, ObjectCorrupt, TokenError
from casstore.format.layout import MAX_BATCH, MAX_RELEASE_DOC
from casstore.format.objects import ObjectId
from casstore.server.metrics import METRICS
from casstore.server.params import (
    BadRequest,
    params,
    parse_name,
    parse_oid,
    parse_revision_file,
    text,
)
from casstore.server.storeservice import STORE, Refused, StoreService

log = logging.getLogger(__name__)
BODY_TIMEOUT = 60.0  # seconds for a whole request body (1 MiB objects on slow links)


def authorize(request: web.Request) -> web.Response | None:
    """None if the request carries a valid token, else the 401 (or 500) to answer."""
    svc: StoreService = request.app[STORE]
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, token = header.partition(" ")
    try:
        who = svc.tokens.check(token.strip()) if scheme.lower() == "bearer" else None
    except TokenError as exc:
        log.error("%s", exc)
        return text(500, "the server's token file is damaged")
    if who is None:
        return text(401, "a valid bearer token is needed to write",
                    **{"WWW-Authenticate": 'Bearer realm="cas serve"'})
    return None


async def read_body(request: web.Request, limit: int) -> bytes | web.Response:
    """The whole body within ``limit`` bytes and :data:`BODY_TIMEOUT`, else the answer."""
    length = request.content_length
    if length is not None and length > limit:
        return text(413, f"body too large (limit {limit} bytes)")
    buf = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            while chunk := await request.content.readany():
                buf += chunk
                if len(buf) > limit:
                    return text(413, f"body too large (limit {limit} bytes)")
    except TimeoutError:
        return text(408, "request body not received in time", Connection="close")
    return bytes(buf)


def parse_ids(body: bytes) -> list[ObjectId]:
    """The ids of a missing-objects query; ValueError for anything else."""
    try:
        ids = json.loads(body)["ids"]
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except (KeyError, TypeError) as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(ids, list) or len(ids) > MAX_BATCH:
        raise ValueError("not a list within the batch limit")
    try:
        return [ObjectId.parse(x) for x in ids]
    except (CasError, TypeError, AttributeError) as exc:
        raise ValueError(str(exc)) from None


async def post_missing(request: web.Request) -> web.Response:
    if (denied := authorize(request)) is not None:
        return denied
    body = await read_body(request, 1 << 20)
    if isinstance(body, web.Response):
        return body
    try:
        oids = parse_ids(body)
    except ValueError:
        return text(400, f'body must be {{"ids": [up to {MAX_BATCH} object ids]}}')
    svc: StoreService = request.app[STORE]
    try:
        missing = await asyncio.get_running_loop().run_in_executor(svc.pool, svc.missing, oids)
    except CasError as exc:
        log.error("missing-objects query failed: %s", exc)
        return text(500, "cannot read the store's index")
    return web.json_response({"missing": [str(o) for o in missing]},
                             headers={"Cache-Control": "no-store"})


async def put_object(request: web.Request) -> web.Response:
    try:
        oid = parse_oid(params(request)["xx"], params(request)["rest"])
    except BadRequest as exc:
        return text(400, str(exc))
    if (denied := authorize(request)) is not None:
        return denied
    svc: StoreService = request.app[STORE]
    body = await read_body(request, svc.cfg.max_object)
    if isinstance(body, web.Response):
        return body
    try:
        written = await asyncio.get_running_loop().run_in_executor(
            svc.pool, svc.put_object, oid, body)
    except ObjectCorrupt as exc:
        return text(400, f"refused: {exc}")
    except CasError as exc:
        log.error("cannot store object %s: %s", oid, exc)
        return text(507 if exc.exit_code == 9 else 500, "cannot store the object")
    if written:
        metrics = request.app[METRICS]
        metrics.uploaded.inc()
        metrics.uploaded_bytes.inc(len(body))
        return text(201, "stored")
    return text(200, "already present")


async def put_release(request: web.Request) -> web.Response:
    try:
        name = parse_name(params(request)["name"])
        rev = parse_revision_file(params(request)["file"])
    except BadRequest as exc:
        return text(400, str(exc))
    if (denied := authorize(request)) is not None:
        return denied
    body = await read_body(request, MAX_RELEASE_DOC)
    if isinstance(body, web.Response):
        return body
    svc: StoreService = request.app[STORE]
    try:
        written = await asyncio.get_running_loop().run_in_executor(
            svc.pool, svc.put_release, name, rev, body)
    except Refused as exc:
        log.warning("refused release %s@%d: %s", name, rev, exc)
        return text(exc.status, f"refused: {exc}")
    except CasError as exc:
        log.error("cannot store release %s@%d: %s", name, rev, exc)
        return text(500, "cannot store the release")
    if written:
        request.app[METRICS].releases.inc()
        return text(201, "release stored")
    return text(200, "this release is already here")
