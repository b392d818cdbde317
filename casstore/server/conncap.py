"""Connection caps in front of aiohttp: per client address and in total.

aiohttp has no limit on connections, so one client with thousands of idle or
dribbling connections would take every descriptor and stop the server answering
anyone (``/healthz`` included).  The listening socket's protocol factory is wrapped
here: a connection past its client's cap, or past the total cap (kept below the
descriptor limit so that accepting, logging and opening files keep working), is
closed at once; the others are handed to aiohttp's own protocol unchanged.  Slow
clients are closed by aiohttp's keep-alive timer, which also bounds the time to
send a request head (see :func:`casstore.server.metrics.handler_args`).

Connections are served by :class:`QuietHandler`, aiohttp's handler whose answer to a
request its parser rejects is the status line's phrase only: aiohttp's own echoes the
offending request text, body included, back in the error page.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus

from aiohttp import web

log = logging.getLogger(__name__)
FD_RESERVE = 256  # descriptors kept for the store, the log, the tarball cache


@dataclass
class Caps:
    """Limits and live counts of one worker process."""

    per_client: int = 256
    total: int = 0  # 0: from the descriptor limit
    open: dict[str, int] = field(default_factory=dict)
    count: int = 0
    refused: Callable[[str], None] = lambda _reason: None

    def __post_init__(self) -> None:
        if self.total <= 0:
            self.total = max(64, raise_fd_limit() - FD_RESERVE)


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one; returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class CappedProtocol(asyncio.Protocol):
    """Forwards to aiohttp's protocol, unless the connection is over a cap."""

    __slots__ = ("caps", "make", "inner", "client")

    def __init__(self, caps: Caps, make: Callable[[], asyncio.Protocol]) -> None:
        self.caps, self.make = caps, make
        self.inner: asyncio.Protocol | None = None
        self.client = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) else str(peer)
        caps = self.caps
        n = caps.open.get(self.client, 0)
        reason = ("client" if n >= caps.per_client
                  else "total" if caps.count >= caps.total else "")
        if reason:
            caps.refused(reason)
            transport.abort()  # an RST: nothing is read, nothing is answered
            return
        caps.open[self.client] = n + 1
        caps.count += 1
        self.inner = self.make()
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is None:
            return
        caps = self.caps
        n = caps.open.get(self.client, 1) - 1
        if n:
            caps.open[self.client] = n
        else:
            caps.open.pop(self.client, None)
        caps.count -= 1
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


def capped(caps: Caps, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for ``loop.create_server`` that applies ``caps``."""
    return lambda: CappedProtocol(caps, make)


class QuietHandler(web.RequestHandler):
    """aiohttp's connection handler; parser errors answer without echoing the request."""

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status != HTTPStatus.INTERNAL_SERVER_ERROR:
            message = f"{status} {HTTPStatus(status).phrase}\n"
        return super().handle_error(request, status, exc, message)


def handler_factory(server: web.Server, loop: asyncio.AbstractEventLoop,
                    args: dict) -> Callable[[], asyncio.Protocol]:
    """Makes a :class:`QuietHandler` per connection for ``server`` (an AppRunner's)."""
    return lambda: QuietHandler(server, loop=loop, **args)
