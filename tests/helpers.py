"""Shared test helpers: run the real ``cas`` command, build trees, compare trees."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    code: int
    out: str
    err: str


# Commands that write into a store.  Only ``cas init`` creates one, so a writer aimed
# at a folder that does not exist yet is preceded by ``cas init``, as a user must.
WRITERS = frozenset({"put", "registry", "depot", "pull"})


def cas(store: Path | None, *args: str, check: bool = False, env: dict | None = None,
        input: bytes | None = None, timeout: float = 300, init: bool = True) -> Result:
    """Run ``python -m casstore`` as a user would (a real process, real exit code).

    With ``init`` (the default), a writing command whose ``store`` does not exist yet
    runs ``cas init`` first; ``init=False`` shows what a user without one sees.
    """
    cmd = [sys.executable, "-m", "casstore"]
    if store is not None:
        cmd += ["--store", str(store)]
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("CAS_DEBUG", None)
    command = next((a for a in args if not a.startswith("-")), None)
    if init and store is not None and command in WRITERS and not os.path.lexists(store):
        subprocess.run(cmd + ["init"], capture_output=True, env=full_env, timeout=timeout)
    p = subprocess.run(cmd + list(args), capture_output=True, env=full_env, input=input,
                       timeout=timeout)
    res = Result(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))
    if check and res.code != 0:
        raise AssertionError(f"cas {' '.join(args)} failed ({res.code}): {res.err}")
    return res


def assert_one_line_error(res: Result) -> None:
    """A user error: non-zero exit, one line on stderr, no traceback."""
    assert res.code != 0, res
    assert "Traceback" not in res.err, res.err
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(lines) == 1, res.err
    assert lines[0].startswith("cas: error:"), res.err


def make_tree(root: Path, seed: int = 1, big: int = 6 << 20) -> None:
    """A varied tree: inline, single-chunk and multi-chunk files, links, modes, ns mtimes."""
    rnd = random.Random(seed)
    (root / "src" / "deep" / "er").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    files = {
        "src/a.jl": b"module A\nf(x) = x + 1\nend\n",
        "src/deep/er/b.txt": rnd.randbytes(20_000),
        "empty": b"",
        "big.bin": rnd.randbytes(big // 2) + bytes(big // 2),
        "mid.bin": rnd.randbytes(300_000),
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    (root / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o755)
    os.chmod(root / "src/a.jl", 0o600)
    os.symlink("src/a.jl", root / "link-to-a")
    os.symlink("/nonexistent/target", root / "dangling")
    for i, p in enumerate(sorted(root.rglob("*"))):
        t = 1_600_000_000_123_456_789 + i * 1_000_000_007
        os.utime(p, ns=(t, t), follow_symlinks=False)


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything that must survive a round trip, per relative path."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        rel = str(p.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("l", os.readlink(p), st.st_mtime_ns)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("d", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
        else:
            out[rel] = ("f", stat.S_IMODE(st.st_mode), st.st_mtime_ns, p.read_bytes())
    return out


def remove_deep(*paths: Path) -> None:
    """Remove trees too deep for pytest's own (recursive) temp-folder cleanup: GNU rm
    walks iteratively, so a 1500-level folder left behind cannot break later runs."""
    subprocess.run(["rm", "-rf", "--", *map(str, paths)], check=True)


def terminate(proc: subprocess.Popen | None, grace: float = 30) -> None:
    """SIGTERM to a process this harness started (by its Popen, so by PID), wait up
    to ``grace`` seconds, then SIGKILL: the one way servers and proxies are stopped."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
