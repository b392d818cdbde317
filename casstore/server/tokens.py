"""Bearer tokens for writes to ``cas serve`` (push), stored hashed.

A token is 32 random bytes shown once (``cas serve token add NAME``), as
``cas_`` + 64 hex digits.  The server keeps only SHA-256 of the token text, in
``<store>/server/tokens.json`` (folder 0700, file 0600, never served), so a
leaked file does not give write access.  A presented token is hashed and compared
with *every* stored hash with :func:`hmac.compare_digest`, so neither the answer
time nor an early exit tells an attacker how much of a guess was right.  The file
is re-read when it changes, so ``revoke`` takes effect without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from casstore.errors import StoreError, TokenError
from casstore.fileio.fsutil import atomic_write
from casstore.fileio.safeio import read_regular
from casstore.format.names import check_ref_name

TOKEN_PREFIX = "cas_"
_TOKEN_RE = re.compile(r"^cas_[0-9a-f]{64}$")
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
FILE_FORMAT = "casstore-serve-tokens"
MAX_FILE = 1 << 20


def default_path(store: Path) -> Path:
    """Where the token hashes of a store live (a server-side folder, never served)."""
    return Path(store) / "server" / "tokens.json"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    name: str
    created: int
    sha256: str


class TokenFile:
    """The token hashes of one server; thread-safe; re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._state: tuple[int, int, int] | None = None  # (ino, size, mtime_ns)
        self._tokens: dict[str, TokenInfo] = {}

    # -- reading -------------------------------------------------------------------
    def _load(self) -> dict[str, TokenInfo]:
        data = read_regular(self.path, MAX_FILE, f"token file {self.path}", corrupt=TokenError)
        if data is None:
            return {}
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT:
                raise ValueError
            out = {}
            for name, item in doc["tokens"].items():
                check_ref_name(name)
                if not _HASH_RE.match(item["sha256"]) or type(item["created"]) is not int:
                    raise ValueError
                out[name] = TokenInfo(name, item["created"], item["sha256"])
            return out
        except (ValueError, KeyError, TypeError, AttributeError, StoreError):
            raise TokenError(f"token file {self.path} is damaged") from None

    def tokens(self) -> dict[str, TokenInfo]:
        """The current tokens (re-read if the file changed since the last call)."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
            state = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            state = (0, 0, 0)
        with self._lock:
            if state != self._state:
                self._tokens = self._load() if state != (0, 0, 0) else {}
                self._state = state
            return dict(self._tokens)

    def check(self, presented: str | None) -> str | None:
        """The name of the token ``presented`` is, or None.  Constant time per token."""
        if not presented:
            return None
        want = token_hash(presented).encode()
        found = None
        for info in self.tokens().values():  # no early exit
            if hmac.compare_digest(want, info.sha256.encode()):
                found = info.name
        return found

    # -- managing (the CLI) ------------------------------------------------------------
    def _write(self, tokens: dict[str, TokenInfo]) -> None:
        folder = self.path.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode):
            raise TokenError(f"{folder} is not a folder")
        os.chmod(folder, 0o700)
        doc = {"format": FILE_FORMAT, "version": 1,
               "tokens": {n: {"sha256": t.sha256, "created": t.created}
                          for n, t in sorted(tokens.items())}}
        atomic_write(self.path, json.dumps(doc, indent=1).encode() + b"\n", folder, mode=0o600)

    def add(self, name: str) -> str:
        """Make a new token called ``name``; returns it (the only time it is seen)."""
        check_ref_name(name)
        tokens = self.tokens()
        if name in tokens:
            raise TokenError(f"a token named {name!r} exists; revoke it first")
        token = TOKEN_PREFIX + secrets.token_bytes(32).hex()
        tokens[name] = TokenInfo(name, int(time.time()), token_hash(token))
        self._write(tokens)
        return token

    def revoke(self, name: str) -> None:
        tokens = self.tokens()
        if name not in tokens:
            raise TokenError(f"no token named {name!r}")
        del tokens[name]
        self._write(tokens)


def well_formed(token: str) -> bool:
    """True if ``token`` looks like one this module makes (for client-side checks)."""
    return bool(_TOKEN_RE.match(token))
