"""Object sources: one interface (``base``), one module per implementation, and wrappers.

* :mod:`~casstore.sources.base` - the :class:`ObjectSource` interface and its errors;
* :mod:`~casstore.sources.local` - a store folder as plain files (disk, NFS, CVMFS);
* :mod:`~casstore.sources.http` - a store served over HTTP(S), with fail-over and proxies;
* :mod:`~casstore.sources.transport` - the one HTTP client under it (and under push/pull);
* :mod:`~casstore.sources.mem` - objects in memory, with chosen faults (tests, tools);
* :mod:`~casstore.sources.knownbad` - remembers failed objects (wrapper);
* :mod:`~casstore.sources.objcache` - an on-disk, verified, LRU object cache (wrapper);
* :mod:`~casstore.sources.counters` - lock-free per-thread counters the sources bump.

``open_source(spec)`` is the one factory that turns a config string into a source.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from casstore.errors import UsageError
from casstore.sources.base import ObjectSource, fetch, source_layers, stored_type, verified
from casstore.sources.local import LocalSource

if TYPE_CHECKING:
    from casstore.sources.http import HTTPSettings
    from casstore.sources.objcache import ObjectCache

__all__ = ["LocalSource", "ObjectCache", "ObjectSource", "fetch",
           "open_source", "prefetch", "stored_type", "verified"]

SCHEMES = ("http://", "https://")


def __getattr__(name: str) -> object:
    """``ObjectCache`` is imported on first use: ``cas put``/``get`` never need it, and
    every short command pays for each import at start-up (bench/bench_store.py)."""
    if name == "ObjectCache":
        from casstore.sources.objcache import ObjectCache

        return ObjectCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_source(spec: str | Path | list[str | Path], *, cache_dir: Path | None = None,
                cache_bytes: int = 0, http: HTTPSettings | None = None) -> ObjectSource:
    """The source a config value names.

    * a store folder (a path, or a one-element list holding one): a
      :class:`LocalSource`; its files are already on a local or network filesystem
      with its own cache, so ``cache_dir`` is not used for it;
    * an ``http(s)://`` URL, or a list of them (fail-over, tried in order): an
      :class:`~casstore.sources.http.HTTPSource` with ``http`` settings (timeouts,
      proxies), wrapped as ``ObjectCache(source, cache_dir, cache_bytes)`` when a
      cache folder and a quota are given (see :func:`with_cache`).  ``cache_dir`` is
      the object cache folder itself (a client uses ``cfg.cache_dir / "objects"``:
      see :func:`casstore.client.connect.open_client_source`).
    """
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not items or not all(isinstance(x, (str, Path)) and str(x) for x in items):
        raise UsageError(f"a source must be a store folder or http(s) URLs, not {spec!r}")
    texts = [x if isinstance(x, str) else str(x) for x in items]
    urls = [t for t in texts if "://" in t]
    if urls:
        if len(urls) != len(texts):
            raise UsageError("a list of sources must all be http(s):// URLs (fail-over)")
        for u in urls:
            if not u.startswith(SCHEMES):
                raise UsageError(f"source {u!r}: only http:// and https:// URLs are supported")
        from casstore.sources.http import HTTPSource

        return with_cache(HTTPSource(urls, http), cache_dir, cache_bytes)
    if len(texts) != 1:
        raise UsageError("several store folders are not supported; fail-over is between "
                         "http(s) URLs")
    return LocalSource(Path(texts[0]).expanduser().resolve())


def with_cache(source: ObjectSource, cache_dir: Path | None, cache_bytes: int) -> ObjectSource:
    """``source`` behind an on-disk object cache when a folder and a size are given."""
    if cache_dir is None or cache_bytes <= 0:
        return source
    from casstore.sources.objcache import ObjectCache

    return ObjectCache(source, cache_dir, cache_bytes)


def prefetch(source: ObjectSource, oids: list) -> object | None:
    """Bring ``oids`` into the source's object cache, concurrently where the source
    allows (an HTTP source behind an :class:`ObjectCache`); a no-op for a source
    without a cache (a local folder is its own cache).  Returns the cache's
    :class:`~casstore.sources.objcache.PrefetchResult`, or None."""
    fn = getattr(source, "prefetch", None)
    return fn(list(oids)) if fn is not None else None


def suspend_threads(source: object) -> None:
    """Stop the helper threads of ``source`` and of every source it wraps (they start
    again on the next request): a process about to fork in C (libfuse daemonising)
    must not carry threads that Python will wait for in the child."""
    for layer in source_layers(source):
        fn = getattr(layer, "suspend", None)
        if fn is not None:
            fn()
