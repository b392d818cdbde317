"""Compatibility shim while the node side moves to :mod:`casstore.sources` (issue 7).

To be removed: import from ``casstore.sources``, ``casstore.sources.layout`` and
``casstore.names`` instead.
"""

from casstore.names import check_ref_name
from casstore.sources.base import ObjectSource, fetch
from casstore.sources.layout import RELEASE_SUFFIX, object_path, release_path
from casstore.sources.local import LocalSource, check_store_format

__all__ = ["RELEASE_SUFFIX", "LocalSource", "ObjectSource", "check_ref_name",
           "check_store_format", "fetch", "object_path", "release_path"]
