"""``cas doctor``: probe a node's client setup, one line per check (``cvmfs_config probe``).

Each check answers one question an admin asks when ``/depot`` misbehaves, and
says either ``OK`` with what it found or ``FAIL`` with why; ``SKIP`` means it
could not be asked because an earlier check failed (or was switched off).  The
checks, in order:

``config``   the client config file parses (unknown keys, bad values);
``keys``     the trusted keys load (``.pub`` files exist and parse, hex keys are keys);
``mount``    (MOUNTPOINT given) it is a live casstore mount: its release is probed;
``source X`` for each configured source (folder or URL) on its own, no fail-over:
             it answers, and the release's newest (or given) revision verifies with
             the trusted keys, is not expired, is not older than a revision this
             node already saw, and its root tree is served and hashes right;
``cache``    ``cache_dir`` (and ``files/``, ``objects/`` in it) is a directory owned
             by this user and not writable by group or others (what ``cas mount``
             demands), or can be created; its filesystem has at least ``min_free``
             bytes free (default 1 GiB, ``--min-free``);
``cpu``      the host's CPU levels, and the variant of the release this node would
             mount (``arch`` of the config, or ``--arch``, forces a level);
``julia``    ``julia/bin/julia -e 1`` of the release starts: through the given
             MOUNTPOINT, else from a private mount (``cas exec``, needs root).

The checks do not change the node, except that the ``julia`` check mounts the
release privately (which records its revision as seen, as any mount does).  The
CLI (``casstore/cli/doctor_cmd.py``) prints the lines and exits with
:class:`~casstore.errors.DoctorFailed` if any check failed.

This module is the runner (the order, and what is skipped when an earlier check
fails); the checks are in :mod:`casstore.client.doctor_checks` and
:mod:`casstore.client.doctor_julia`, over the model in :mod:`casstore.client.doctor_model`.
"""

from __future__ import annotations

from collections.abc import Callable

from casstore.client.doctor_checks import (
    check_cache,
    check_config,
    check_keys,
    check_sources,
    target_check,
)
from casstore.client.doctor_julia import check_cpu, check_julia
from casstore.client.doctor_model import FAIL, SKIP, Check, Options, State

__all__ = ["Check", "Options", "failed", "run"]


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == FAIL]


def run(opts: Options, report: Callable[[Check], None] | None = None) -> list[Check]:
    """Run every check in order; ``report`` sees each as soon as it is known."""
    out: list[Check] = []
    st = State()

    def add(check: Check) -> None:
        out.append(check)
        if report is not None:
            report(check)

    add(check_config(opts, st))
    if st.cfg is None:
        for name in ("keys", "source", "cache", "cpu", "julia"):
            add(Check(name, SKIP, "the config does not load"))
        return out
    add(check_keys(st))
    if opts.target is not None:
        target = target_check(opts.target, st)
        if target is not None:
            add(target)
    for check in check_sources(opts, st):
        add(check)
    add(check_cache(st.cfg, opts.min_free))
    add(check_cpu(opts, st))
    add(check_julia(opts, st))
    return out
