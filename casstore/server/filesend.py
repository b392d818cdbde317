"""Sending an already opened, already checked file: the one file path of ``cas serve``.

Objects and cached Pkg tarballs are opened ``O_NOFOLLOW | O_NONBLOCK`` and checked
with ``fstat`` (a regular file within a size limit, and for the tarball cache, ours)
before a byte is sent, so a planted symlink or FIFO is refused instead of followed
or waited on.  The answer honours If-None-Match, If-Modified-Since, Range and
If-Range.  Small bodies are one ``pread`` (cheaper than sendfile's extra loop round
trips); bigger ones go through :class:`FileSlice`, which sends with ``sendfile``
when the event loop has it.  aiohttp's own ``FileResponse`` is not used on a path:
it opens the path itself, following symlinks, and looks for ``.gz`` siblings.
"""

from __future__ import annotations

import os

from aiohttp import hdrs, web

from casstore.server.httpcache import UNSATISFIABLE, http_date, not_modified, requested_range

SENDFILE_MIN = 256 << 10  # smaller bodies are read and written, bigger ones sendfile-d


def file_response(request: web.BaseRequest, fd: int, st: os.stat_result, etag: str,
                  headers: dict[str, str]) -> web.StreamResponse:
    """The answer for an opened file; takes ownership of ``fd`` (closed on every path)."""
    size = st.st_size
    headers = {**headers, "ETag": etag, "Last-Modified": http_date(st.st_mtime),
               "Accept-Ranges": "bytes"}
    if not_modified(request, etag, st.st_mtime):
        os.close(fd)
        return web.Response(status=304, headers=headers)
    rng = requested_range(request, etag, size)
    if rng == UNSATISFIABLE:
        os.close(fd)
        return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    status, offset, count = 200, 0, size
    if rng is not None:
        status, (offset, count) = 206, rng
        headers["Content-Range"] = f"bytes {offset}-{offset + count - 1}/{size}"
    if count > SENDFILE_MIN or request.method == hdrs.METH_HEAD:
        return FileSlice(os.fdopen(fd, "rb"), offset, count, status, headers)
    try:
        body = os.pread(fd, count, offset)
    finally:
        os.close(fd)
    if len(body) != count:
        return web.Response(status=500, text="file changed while read\n",
                            headers={"Cache-Control": "no-store"})
    return web.Response(body=body, status=status, headers=headers)


class FileSlice(web.FileResponse):
    """Sends ``count`` bytes at ``offset`` of an already opened, checked file
    (with sendfile when aiohttp can), and remembers how many it sent.

    It reuses aiohttp's ``FileResponse._sendfile`` (a private method: pyproject pins
    aiohttp below the next minor release for that reason), because a public
    StreamResponse offers no way to hand the socket to ``sendfile`` after the headers.
    """

    def __init__(self, fobj, offset: int, count: int, status: int,
                 headers: dict[str, str]) -> None:
        super().__init__(os.devnull, status=status, headers=headers)
        self._fobj, self._offset, self._count = fobj, offset, count
        self.cas_bytes = 0

    async def prepare(self, request: web.BaseRequest):  # type: ignore[override]
        try:
            self.content_length = self._count
            if self._count == 0 or request.method == hdrs.METH_HEAD:
                return await web.StreamResponse.prepare(self, request)
            writer = await self._sendfile(request, self._fobj, self._offset, self._count)
            self.cas_bytes = self._count
            return writer
        finally:
            self._fobj.close()

    async def _sendfile_fallback(self, writer, fobj, offset: int, count: int):
        """No native sendfile (uvloop): pread from the page cache in the loop, 1 MiB at
        a time (aiohttp's own fallback hops to a thread for every 256 KiB)."""
        fd = fobj.fileno()
        while count > 0:
            chunk = os.pread(fd, min(count, 1 << 20), offset)
            if not chunk:  # the file shrank: never send a short body as if complete
                raise ConnectionResetError("file shrank while sent")
            await writer.write(chunk)
            offset += len(chunk)
            count -= len(chunk)
        await writer.drain()
        return writer
