"""Signed release documents, Ed25519 keys, and verification.

A release names a root tree and (optionally) per-CPU-level overlay trees.  Its
signature covers a canonical JSON body under a fixed signing context, and is
verified *before* the body is parsed.  A verifier refuses untrusted keys, expired
releases and revisions older than the newest it has seen (rollback/replay).
Rollback by the publisher is a *new* revision pointing at an old tree.
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nacl.exceptions
import nacl.signing

from casstore.errors import (
    BadSignature,
    CasError,
    FormatError,
    KeyFileError,
    NotFound,
    ReleaseExpired,
    RollbackRefused,
    StoreError,
    Unsigned,
    UntrustedKey,
    UsageError,
)
from casstore.fileio.fsutil import atomic_write
from casstore.format.names import check_ref_name
from casstore.format.objects import ObjectId

DOC_FORMAT = "casstore-release"
# The release meta key holding the prefetch lists (FORMAT §6.5).
PREFETCH_META_KEY = "prefetch"
DOC_VERSION = 1
SIGNING_CONTEXT = b"casstore release v1\n"
SECRET_TAG = "casstore-ed25519-secret"
PUBLIC_TAG = "casstore-ed25519"
MAX_DOC = 1 << 20
DAY = 86400
MAX_TIME = 253402300799  # 9999-12-31 23:59:59 UTC: created/expires beyond it are malformed
MAX_EXPIRES_DAYS = 100 * 366
MISSING_TOLERATED = 16  # listed revisions without a document skipped before giving up


@dataclass
class Release:
    """The signed body of a release."""

    name: str
    revision: int
    root: str
    created: int
    expires: int
    variants: dict[str, str] = field(default_factory=dict)
    baseline: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def root_id(self) -> ObjectId:
        return ObjectId.parse(self.root)

    def variant_ids(self) -> dict[str, ObjectId]:
        return {k: ObjectId.parse(v) for k, v in self.variants.items()}

    def trees(self) -> dict[str, ObjectId]:
        """Every tree this release keeps alive, by label: the root, each variant's
        overlay and each prefetch list (FORMAT §6.5).  gc, fsck, publish, push, pull,
        mirror and the server all walk from exactly these, so none forgets one."""
        out = {"root": self.root_id}
        out.update({f"variant {k}": v for k, v in self.variant_ids().items()})
        lists = self.prefetch_ids().items()
        out.update({f"prefetch list {k or '(no variant)'}": v for k, v in lists})
        return out

    def prefetch_ids(self) -> dict[str, ObjectId]:
        """``meta.prefetch`` as level -> prefetch tree id ("" for no variant); a
        malformed value is a FormatError.  Walkers of release trees add these to the
        root and overlays, so that a list is kept and copied with its release."""
        raw = self.meta.get(PREFETCH_META_KEY) if isinstance(self.meta, dict) else None
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise FormatError(f"release {self.name}@{self.revision}: meta.prefetch is not an "
                              "object")
        try:
            return {str(k): ObjectId.parse(v) for k, v in raw.items()}
        except (CasError, ValueError, AttributeError, TypeError):
            raise FormatError(f"release {self.name}@{self.revision}: bad id in meta.prefetch") \
                from None

    def canonical(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()


# -- keys ------------------------------------------------------------------------
def keygen(path: Path) -> str:
    """Write a new secret key to ``path`` (mode 0600) and its public key to ``path.pub``."""
    sk = nacl.signing.SigningKey.generate()
    pub = sk.verify_key.encode().hex()
    if path.exists():
        raise KeyFileError(f"{path} already exists; refusing to overwrite a key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{SECRET_TAG} {base64.b64encode(sk.encode()).decode()}\n")
    Path(str(path) + ".pub").write_text(f"{PUBLIC_TAG} {pub}\n")
    return pub


def load_secret(path: Path) -> nacl.signing.SigningKey:
    try:
        tag, b64 = path.read_text().split()
        if tag != SECRET_TAG:
            raise ValueError
        return nacl.signing.SigningKey(base64.b64decode(b64, validate=True))
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except (ValueError, TypeError, nacl.exceptions.CryptoError):
        raise KeyFileError(f"{path} is not a casstore secret key") from None


def parse_public(text: str) -> str:
    """A public key as 64 hex chars, from ``casstore-ed25519 <hex>``, bare hex, or a .pub file."""
    text = text.strip()
    if os.path.exists(text):
        text = Path(text).read_text().strip()
    if text.startswith(PUBLIC_TAG + " "):
        text = text.split(None, 1)[1].strip()
    try:
        if len(bytes.fromhex(text)) != 32:
            raise ValueError
    except ValueError:
        raise KeyFileError(f"not an Ed25519 public key: {text[:40]!r}") from None
    return text.lower()


# -- documents -------------------------------------------------------------------
def sign(rel: Release, sk: nacl.signing.SigningKey) -> bytes:
    """The release document bytes, as stored under releases/NAME/."""
    body = rel.canonical()
    sig = sk.sign(SIGNING_CONTEXT + body).signature
    doc = {"format": DOC_FORMAT, "version": DOC_VERSION,
           "key": sk.verify_key.encode().hex(),
           "body": base64.b64encode(body).decode(),
           "signature": base64.b64encode(sig).decode()}
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def _outer(doc: bytes) -> dict:
    if len(doc) > MAX_DOC:
        raise FormatError("release document is too large")
    try:
        outer = json.loads(doc)
    except ValueError:
        raise FormatError("release document is not valid JSON") from None
    if not isinstance(outer, dict) or outer.get("format") != DOC_FORMAT:
        raise FormatError("not a casstore release document")
    if outer.get("version") != DOC_VERSION:
        raise FormatError(f"unsupported release document version {outer.get('version')}")
    return outer


def unverified(doc: bytes) -> Release:
    """Parse a body WITHOUT checking its signature: for listings and gc's marking."""
    try:
        body = base64.b64decode(_outer(doc).get("body", ""), validate=True)
    except (ValueError, TypeError):
        raise FormatError("release body is not base64") from None
    return _body(body)


def verify(doc: bytes, trusted: list[str], *, now: float | None = None) -> Release:
    """Check signature, key and expiry; return the body.  Rollback is checked apart."""
    outer = _outer(doc)
    if not outer.get("signature"):
        raise Unsigned("release is not signed")
    key = str(outer.get("key", "")).lower()
    if key not in trusted:
        raise UntrustedKey(f"release is signed by an untrusted key {key[:16]}...")
    try:
        body = base64.b64decode(outer["body"], validate=True)
        sig = base64.b64decode(outer["signature"], validate=True)
        nacl.signing.VerifyKey(bytes.fromhex(key)).verify(SIGNING_CONTEXT + body, sig)
    except (ValueError, TypeError, KeyError, nacl.exceptions.BadSignatureError):
        raise BadSignature("release signature does not verify (document was altered)") from None
    rel = _body(body)
    if (now if now is not None else time.time()) > rel.expires:
        raise ReleaseExpired(f"release {rel.name} revision {rel.revision} expired at "
                             f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(rel.expires))}")
    return rel


def check_body(body: bytes) -> Release:
    """Parse and validate a body as every verifier will (used before signing too)."""
    return _body(body)


def _is_int(value: object, lo: int, hi: int) -> bool:
    """A JSON integer in range: not a bool (an int in Python), not a float, NaN or inf."""
    return type(value) is int and lo <= value <= hi


def _body(body: bytes) -> Release:
    try:
        d = json.loads(body)
        if not isinstance(d, dict):
            raise TypeError
        rel = Release(**d)
        check_ref_name(rel.name)
        if not (isinstance(rel.root, str) and isinstance(rel.variants, dict)
                and isinstance(rel.meta, dict)
                and (rel.baseline is None or isinstance(rel.baseline, str))
                and all(isinstance(k, str) and isinstance(v, str)
                        for k, v in rel.variants.items())):
            raise TypeError
        rel.variant_ids()
        ObjectId.parse(rel.root)
    except (ValueError, TypeError, StoreError):  # FormatError is a StoreError
        raise FormatError("release body is malformed") from None
    if not _is_int(rel.revision, 1, 2**63 - 1):
        raise FormatError(f"release body has a bad revision {rel.revision!r} "
                          "(must be an integer >= 1)")
    for label in ("created", "expires"):
        if not _is_int(getattr(rel, label), 0, MAX_TIME):
            raise FormatError(f"release body has a bad {label} time {getattr(rel, label)!r} "
                              "(must be integer Unix seconds)")
    if rel.variants and rel.baseline not in rel.variants:
        raise FormatError("release variants do not include the baseline")
    return rel


def expiry(now: int, days: float) -> int:
    """The ``expires`` time ``days`` after ``now``; never an already-expired release."""
    if (isinstance(days, bool) or not isinstance(days, (int, float)) or not math.isfinite(days)
            or days <= 0 or days > MAX_EXPIRES_DAYS):
        raise UsageError(f"bad expiry {days!r} days (use a number of days > 0 and "
                         f"<= {MAX_EXPIRES_DAYS})")
    expires = now + int(days * DAY)
    if expires <= now:
        raise UsageError(f"expiry of {days!r} days is less than a second")
    return expires


def parse_spec(text: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@REV`` -> (name, revision or None); a bad revision is an error.

    Only a plain positive decimal revision is accepted: ``NAME@abc``, ``NAME@-1`` and
    ``NAME@0`` must never quietly mean "the newest".
    """
    name, at, rev = text.partition("@")
    check_ref_name(name)
    if not at:
        return name, None
    if not (rev.isascii() and rev.isdigit()) or int(rev) < 1:
        raise UsageError(f"bad revision {rev!r} in {text!r} (use NAME@N with N >= 1)")
    return name, int(rev)


class SeenRevisions:
    """The newest revision this verifier has accepted per release name (anti-rollback)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, int]:
        try:
            return {k: int(v) for k, v in json.loads(self.path.read_text()).items()}
        except FileNotFoundError:
            return {}
        except (ValueError, AttributeError):
            raise FormatError(f"{self.path} is damaged; remove it to trust releases anew") from None

    def check(self, rel: Release) -> None:
        seen = self._load().get(rel.name, 0)
        if rel.revision < seen:
            raise RollbackRefused(f"release {rel.name} revision {rel.revision} is older than "
                                  f"revision {seen} already seen (rollback or replay)")

    def record(self, rel: Release) -> None:
        state = self._load()
        if rel.revision > state.get(rel.name, 0):
            state[rel.name] = rel.revision
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(state, indent=1).encode(), self.path.parent)


def newest(source, name: str, revision: int | None = None) -> tuple[int, bytes]:
    """(revision, document bytes) of ``name``: the given revision, else the newest one.

    The one "find the newest release": the newest *listed* revision whose
    document exists.  An index that runs ahead of its documents (a mirror copied
    it first) is tolerated by skipping listed revisions whose document is missing;
    one that runs behind simply does not show the newest yet (FORMAT §6.4).
    """
    if revision is not None:
        return revision, source.read_release(name, revision)
    skipped = 0
    for rev in reversed(source.release_revisions(name)):
        try:
            return rev, source.read_release(name, rev)
        except NotFound:
            skipped += 1
            if skipped >= MISSING_TOLERATED:
                break
    raise NotFound(f"release {name!r} has no revisions" if not skipped else
                   f"release {name!r}: the newest listed revisions have no document")


def _check_path(rel: Release, name: str, revision: int, error: type[CasError]) -> Release:
    if rel.name != name or rel.revision != revision:
        raise error(f"release document for {name} revision {revision} names "
                    f"{rel.name} revision {rel.revision} (replayed under a wrong name)")
    return rel


def load_unverified(source, name: str, revision: int | None = None) -> Release:
    """The newest (or given) revision's body WITHOUT a signature check: for listings,
    ``release show`` without keys, and a publishing host with no trusted keys."""
    rev, doc = newest(source, name, revision)
    return _check_path(unverified(doc), name, rev, FormatError)


def load_verified(source, name: str, trusted: list[str], seen: SeenRevisions | None,
                  revision: int | None = None, *, now: float | None = None) -> Release:
    """Fetch, verify and rollback-check a release (the newest when ``revision`` is None).

    ``source`` is any :class:`casstore.sources.ObjectSource`.  On success the
    revision is recorded in ``seen`` so an older one is refused from then on.
    """
    rev, doc = newest(source, name, revision)
    rel = _check_path(verify(doc, trusted, now=now), name, rev, BadSignature)
    if seen is not None:
        seen.check(rel)
        seen.record(rel)
    return rel
