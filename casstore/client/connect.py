"""A node's HTTP settings and object source, built from its client config: the one
place that turns the config's source, proxies, timeouts and object-cache quota into
a composed source, and into the settings of every other HTTP request the CLI makes
(``cas push``/``cas pull``, a ``--store URL``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from casstore.client.config import ClientConfig
from casstore.errors import UsageError
from casstore.sources import ObjectSource, open_source

if TYPE_CHECKING:
    from casstore.sources.transport import HTTPSettings


def http_settings(cfg: ClientConfig, *, parallel: int | None = None) -> HTTPSettings:
    """The HTTP settings a client config asks for (proxy list, timeouts, parallelism;
    ``parallel`` overrides the config's ``http_parallel``, as ``--jobs`` does)."""
    from casstore.sources.transport import HTTPSettings, parse_proxies

    return HTTPSettings(connect_timeout=cfg.connect_timeout, read_timeout=cfg.read_timeout,
                        request_timeout=cfg.request_timeout,
                        parallel=parallel or cfg.http_parallel, proxies=parse_proxies(cfg.proxy))


def open_remote(cfg: ClientConfig, spec: str | Path | list) -> ObjectSource:
    """A source for one CLI command (``--store URL``, ``cas mirror URL ...``): HTTP
    sources get the config's proxies and timeouts, but no object cache (the
    command's user may not own the node's cache folder, and reads a tree once)."""
    return open_source(spec, http=http_settings(cfg))


def open_client_source(cfg: ClientConfig, spec: str | Path | list | None = None) -> ObjectSource:
    """A node's source: ``spec`` (``--store``) or the config's ``source``; HTTP sources
    get the config's proxies and timeouts and the object cache in
    ``cache_dir/objects`` (quota ``object_cache_size``, default ``cache_size``)."""
    spec = spec if spec is not None else cfg.source
    if spec is None:
        raise UsageError("no source: give --store or set 'source' in the client config")
    return open_source(spec, cache_dir=cfg.objects_cache_dir, cache_bytes=cfg.object_cache_bytes,
                       http=http_settings(cfg) if _names_urls(spec) else None)


def _names_urls(spec: str | Path | list) -> bool:
    """Whether ``spec`` names any URL: only then is the HTTP client (aiohttp) imported,
    a cost every mount and ``cas exec`` of a local store would otherwise pay."""
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    return any(isinstance(x, str) and "://" in x for x in items)
