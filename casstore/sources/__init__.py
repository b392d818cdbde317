"""Object sources: one interface (``base``), one module per implementation, and wrappers.

* :mod:`~casstore.sources.base` - the :class:`ObjectSource` interface and its errors;
* :mod:`~casstore.sources.local` - a store folder as plain files (disk, NFS, CVMFS);
* :mod:`~casstore.sources.knownbad` - remembers failed objects (wrapper);
* :mod:`~casstore.sources.objcache` - an on-disk, verified, LRU object cache (wrapper);
* :mod:`~casstore.sources.layout`, :mod:`~casstore.sources.release_index`,
  :mod:`~casstore.sources.safeio` - paths and limits, the release index, checked reads.

``open_source(spec)`` is the one factory that turns a config string into a source.
"""

from __future__ import annotations

from pathlib import Path

from casstore.errors import UsageError
from casstore.sources.base import ObjectSource, fetch, stored_type, verified
from casstore.sources.local import LocalSource
from casstore.sources.objcache import ObjectCache

__all__ = ["LocalSource", "ObjectCache", "ObjectSource", "fetch", "open_source",
           "stored_type", "verified"]

SCHEMES = ("http://", "https://")


def open_source(spec: str | Path | list[str | Path], *, cache_dir: Path | None = None,
                cache_bytes: int = 0) -> ObjectSource:
    """The source a config value names.

    Today ``spec`` is a store folder (a path, or a one-element list holding one)
    and the result is a :class:`LocalSource`: its files are already on a local or
    network filesystem with its own cache, so ``cache_dir`` is not used for it.
    The HTTP issue adds ``http(s)://`` URLs, and lists of them for fail-over; those
    are wrapped as ``ObjectCache(source, cache_dir, cache_bytes)`` when a cache
    folder is given (see :func:`with_cache`).
    """
    if isinstance(spec, (list, tuple)):
        if len(spec) != 1:
            raise UsageError("several sources (fail-over) are not supported yet; "
                             "give one store folder")
        spec = spec[0]
    if not isinstance(spec, (str, Path)) or not str(spec):
        raise UsageError(f"a source must be a store folder path, not {spec!r}")
    text = str(spec)
    if text.startswith(SCHEMES) or "://" in text:
        raise UsageError(f"source {text!r}: only local store folders are supported so far "
                         "(HTTP sources come with the HTTP remote)")
    return LocalSource(Path(text).expanduser().resolve())


def with_cache(source: ObjectSource, cache_dir: Path | None, cache_bytes: int) -> ObjectSource:
    """``source`` behind an on-disk object cache when a folder and a size are given."""
    if cache_dir is None or cache_bytes <= 0:
        return source
    return ObjectCache(source, cache_dir, cache_bytes)
