"""The model behind the store routes of ``cas serve``: configuration and the
blocking writes (object and release uploads), run on the service's thread pool.

An object is verified against its id before it is stored through
:meth:`Store.put_raw`; a release is verified against the server's trusted keys,
must be newer than the current revision and complete, and is written document
first and index last.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from casstore.errors import (
    NotFound,
    ObjectCorrupt,
    ObjectMissing,
    ReleaseError,
    StoreError,
    UntrustedKey,
    UsageError,
)
from casstore.format.layout import MAX_STORED_SIZE
from casstore.format.objects import ObjectId, decode
from casstore.releases.release import verify
from casstore.server.tokens import TokenFile, default_path
from casstore.store.publish import check_publishable
from casstore.store.writable import Store

log = logging.getLogger(__name__)


@dataclass
class StoreConfig:
    """What the store part of ``cas serve`` needs."""

    store: Path
    trusted_keys: list[str]  # release uploads need them; none: release PUT gives 403
    tokens: Path | None = None  # default: <store>/server/tokens.json
    max_age: int = 60  # release documents and refs (index files: no-cache)
    format_max_age: int = 3600  # casstore.json
    max_object: int = MAX_STORED_SIZE
    upload_workers: int = 4


class Refused(Exception):
    """An upload the server will not take, with the status to answer."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


class StoreService:
    """The store behind the routes; blocking work runs on its thread pool."""

    def __init__(self, cfg: StoreConfig) -> None:
        self.cfg = cfg
        self.root = Path(cfg.store)
        self.tokens = TokenFile(cfg.tokens or default_path(self.root))
        self.pool = ThreadPoolExecutor(max_workers=cfg.upload_workers,
                                       thread_name_prefix="cas-store")
        self._store: Store | None = None
        self._open_lock = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}

    @property
    def store(self) -> Store:
        """The writable store, opened on the first write (reads never need LMDB)."""
        with self._open_lock:
            if self._store is None:
                self._store = Store.open(self.root)
            return self._store

    def close(self) -> None:
        """Stop without waiting for a stuck thread (SIGTERM must end the server)."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self._store is not None:
            self._store.close()

    def missing(self, oids: list[ObjectId]) -> list[ObjectId]:
        store = self.store
        return [o for o in oids if not store.verified_present(o)]

    def put_object(self, oid: ObjectId, stored: bytes) -> bool:
        """Verify and store; True if it was written, False if a good copy was there."""
        kind, raw = decode(oid, stored)  # ObjectCorrupt: bytes do not match the id
        store = self.store
        if store.verified_present(oid):
            return False
        with store.lock():
            store.put_raw(kind, raw, oid)
        return True

    def put_release(self, name: str, revision: int, doc: bytes) -> bool:
        """Accept a release document; True if written, False if the same one was there."""
        if not self.cfg.trusted_keys:
            raise Refused(403, "this server has no trusted keys: release uploads are off")
        try:
            rel = verify(doc, self.cfg.trusted_keys)
        except UntrustedKey as exc:
            raise Refused(403, str(exc)) from None
        except (ReleaseError, ObjectCorrupt) as exc:  # unsigned, bad signature, malformed
            raise Refused(400, str(exc)) from None
        except RecursionError:
            raise Refused(400, "the document nests too deeply") from None
        if rel.name != name or rel.revision != revision:
            raise Refused(400, f"the document is {rel.name} revision {rel.revision}, "
                               f"not {name} revision {revision}")
        lock = self._name_locks.setdefault(name, threading.Lock())
        with lock:
            return self._publish(rel, name, revision, doc)

    def _publish(self, rel, name: str, revision: int, doc: bytes) -> bool:
        store = self.store
        try:
            revs = store.release_revisions(name)
        except NotFound:
            revs = []
        if revision in revs:
            if store.read_release(name, revision) == doc:
                return False
            raise Refused(409, f"{name} revision {revision} exists with other content")
        if revs and revision < revs[-1]:
            raise Refused(409, f"{name} revision {revision} is not newer than "
                               f"revision {revs[-1]}")
        try:
            check_publishable(store, rel)
        except ObjectMissing as exc:
            raise Refused(422, f"incomplete release: {exc}") from None
        except ObjectCorrupt as exc:
            raise Refused(422, f"a stored object is damaged: {exc}") from None
        except UsageError as exc:
            raise Refused(400, str(exc)) from None
        try:
            store.write_release(name, revision, doc)
        except StoreError:
            # Another publisher on this host (``cas release``) may have written the
            # revision since we looked: that is a conflict, anything else a failure.
            if revision in store.published_revisions(name):
                raise Refused(409, f"{name} revision {revision} was published meanwhile "
                                   f"by another writer") from None
            raise
        log.info("accepted release %s@%d", name, revision)
        return True


STORE: web.AppKey[StoreService] = web.AppKey("store", StoreService)
