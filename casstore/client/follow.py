"""Revision following: a long-lived mount moves to new revisions of its release.

CVMFS's model, on casstore's release index: every ``ttl`` seconds (and at once on
SIGHUP / ``cas reload``) the mount reads the release's revision list.  A newer
revision than the one served is verified through the very path ``cas mount``
uses (:func:`casstore.client.selection.reselect`: signature with the trusted keys,
expiry, not older than the highest seen revision, variant chosen again).  Only
then is it applied by :meth:`Follower.switch`, the one place a mount changes
revision.  A revision that fails is recorded (``rejected``: which one and why),
logged once per distinct reason, and not applied; the mount stays on the last
good revision and keeps checking, so a later good revision is still taken.

Whether a mount follows at all, how often it checks and how long the kernel may
cache what it saw are decided once, by :func:`follow_policy` (``cas mount`` calls
it; the daemon only reads the :class:`FollowPolicy` it is given).

This module knows nothing of FUSE: ``apply`` (given by the wiring) swaps the
filesystem model; the adapter only supplies how to wait (a timer or a signal).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from casstore.client.config import ClientConfig
from casstore.client.selection import Selection, reselect
from casstore.errors import CasError, NotFound, RemoteError, UsageError
from casstore.releases.release import DAY

log = logging.getLogger(__name__)
PINNED_TIMEOUT_S = float(DAY)  # entry/attr/negative timeouts: content never changes
# ... unless the mount follows new revisions (CVMFS_KCACHE_TIMEOUT's model): then a
# changed path the daemon no longer remembers may show old attributes for at most
# FOLLOW_TIMEOUT_S after a switch (paths it remembers are invalidated at once), and
# a path added by the new revision may stay hidden behind a negative entry cached
# before the switch for at most FOLLOW_NEGATIVE_S.
FOLLOW_TIMEOUT_S = 60.0
FOLLOW_NEGATIVE_S = 10.0


@dataclass(frozen=True)
class FollowPolicy:
    """Whether a mount follows new revisions, every how many seconds it checks, and
    the kernel cache timeouts that go with that choice."""

    follow: bool
    ttl: float  # seconds between checks (meaningful only when following)
    why: str  # what decided it, for the log: "config", "--follow", "pinned", ...

    @property
    def entry_timeout(self) -> float:
        """Seconds the kernel keeps a name's entry and attributes."""
        return FOLLOW_TIMEOUT_S if self.follow else PINNED_TIMEOUT_S

    @property
    def negative_timeout(self) -> float:
        """Seconds the kernel remembers that a name does not exist."""
        return FOLLOW_NEGATIVE_S if self.follow else PINNED_TIMEOUT_S


PINNED = FollowPolicy(False, 0.0, "pinned")


def follow_policy(cfg: ClientConfig, requested: bool | None, *, pinned: bool,
                  owned: bool = False, recording: bool = False) -> FollowPolicy:
    """The one decision: ``requested`` (--follow/--no-follow, None: the config's
    ``follow``) unless the revision is ``pinned`` (NAME@N, --revision), the mount
    belongs to a ``cas exec`` job (``owned``: a job sees one revision from start to
    end) or records accesses for ``cas depot build`` (``recording``).  Asking to
    follow a pinned revision is a usage error, not silently ignored."""
    if requested and pinned:
        raise UsageError("--follow with a pinned revision (NAME@N or --revision): "
                         "a pinned mount never moves")
    for off, why in ((pinned, "pinned"), (owned, "cas exec job"),
                     (recording, "recording accesses")):
        if off:
            return FollowPolicy(False, cfg.ttl, why)
    if requested is None:
        return FollowPolicy(cfg.follow, cfg.ttl, "config")
    return FollowPolicy(requested, cfg.ttl, "--follow" if requested else "--no-follow")


@dataclass
class FollowState:
    """What ``cas status`` shows and metrics export (times are Unix seconds)."""

    revision: int
    ttl: float
    checks: int = 0  # completed checks, successful or not (cas reload waits on it)
    last_check: float | None = None  # the last check attempt ended
    last_ok: float | None = None  # the last check that read and judged the index
    last_switch: float | None = None
    switches: int = 0
    rejected: dict | None = None  # {"revision", "reason", "error", "at"}
    error: str | None = None  # why the last check could not run (e.g. offline)
    history: list[dict] = field(default_factory=list)  # the last switches

    def summary(self) -> dict:
        return {"revision": self.revision, "ttl": self.ttl, "checks": self.checks,
                "last_check": self.last_check, "last_ok": self.last_ok,
                "last_switch": self.last_switch, "switches": self.switches,
                "rejected": self.rejected, "error": self.error,
                "history": list(self.history)}


class Follower:
    """Checks for, verifies and applies new revisions of one mounted release."""

    MAX_HISTORY = 10

    def __init__(self, sel: Selection, cfg: ClientConfig, apply: Callable[[Selection], None],
                 arch: str | None = None, on_change: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time, ttl: float | None = None) -> None:
        self.sel, self.cfg, self.arch = sel, cfg, arch
        self._apply, self._on_change, self._clock = apply, on_change, clock
        self.state = FollowState(sel.release.revision, cfg.ttl if ttl is None else ttl)
        self._lock = threading.Lock()  # one check at a time (timer and reload)

    @property
    def revision(self) -> int:
        return self.state.revision

    def check(self) -> str:
        """One check: ``"current"``, ``"switched"``, ``"rejected"`` or ``"error"``."""
        with self._lock:
            try:
                outcome = self._check()
            finally:
                self.state.checks += 1
                self.state.last_check = self._clock()
            self._on_change()
            return outcome

    def _check(self) -> str:
        name = self.sel.release.name
        try:
            listed = self.sel.source.release_revisions(name)
        except CasError as exc:
            return self._error(f"cannot read the revision list of {name}: {exc}")
        newest = max(listed, default=0)
        if newest <= self.state.revision:
            self._ok()
            return "current"
        try:
            new = reselect(self.sel, self.cfg, self.arch, newest)
        except (RemoteError, NotFound) as exc:  # unreachable, or listed before written:
            # not the revision's fault; the next check tries again
            return self._error(f"cannot fetch {name} revision {newest}: {exc}")
        except CasError as exc:
            self._reject(newest, exc)
            return "rejected"
        if new.release.revision <= self.state.revision:  # e.g. an offline fallback
            self._ok()
            return "current"
        try:
            self.switch(new)
        except CasError as exc:  # its root tree unreadable: not applied, tried again
            return self._error(f"revision {newest} verified, but its content cannot be "
                               f"read: {exc}")
        self._ok()
        return "switched"

    def switch(self, new: Selection) -> None:
        """THE revision switch: apply ``new`` (already verified), then record it.
        If ``apply`` raises (the new root cannot be read), nothing changes."""
        old = self.state.revision
        self._apply(new)
        self.sel = new
        now = self._clock()
        st = self.state
        st.revision, st.last_switch, st.switches = new.release.revision, now, st.switches + 1
        st.history = [*st.history, {"from": old, "to": new.release.revision, "at": now,
                                    "variant": new.level}][-self.MAX_HISTORY:]
        if st.rejected is not None and st.rejected["revision"] <= new.release.revision:
            st.rejected = None  # superseded by a good, newer revision
        log.info("switched %s from revision %d to %d (variant %s)", new.release.name, old,
                 new.release.revision, new.level)

    def _ok(self) -> None:
        self.state.last_ok = self._clock()
        self.state.error = None

    def _error(self, msg: str) -> str:
        if self.state.error != msg:
            log.warning("follow check failed, staying on revision %d: %s",
                        self.state.revision, msg)
        self.state.error = msg
        return "error"

    def _reject(self, revision: int, exc: CasError) -> None:
        reason = str(exc)
        old = self.state.rejected
        if old is None or (old["revision"], old["reason"]) != (revision, reason):
            log.error("rejected %s revision %d, staying on %d: %s", self.sel.release.name,
                      revision, self.state.revision, reason)
        self.state.rejected = {"revision": revision, "reason": reason,
                               "error": type(exc).__name__, "at": self._clock()}
        self._ok()  # the index was read and judged: the check itself worked

    def run(self, wait: Callable[[float], object], stop: threading.Event) -> None:
        """Check after every ``wait(ttl)`` until ``stop`` is set.  ``wait`` returns
        early when a reload is asked for (the adapter waits for SIGHUP)."""
        while not stop.is_set():
            wait(self.state.ttl)
            if stop.is_set():
                return
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the follow thread must never die
                log.exception("unexpected error in a follow check")
