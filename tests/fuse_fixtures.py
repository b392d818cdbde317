"""Fixtures for real FUSE mounts: a store with signed releases, and a mounter that
always unmounts (even when a test fails) and only ever kills processes it started.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from casstore.format.objects import ObjectId
from casstore.releases.release import Release, keygen, load_secret, sign
from casstore.store.snapshot import put_paths
from casstore.store.writable import Store

ROOT = Path(__file__).resolve().parent.parent
CAS = [sys.executable, "-m", "casstore"]


def mounted(mp: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(mp) for line in f)


def run_cas(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("CAS_DEBUG", None)
    return subprocess.run([*CAS, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@dataclass
class Kit:
    """A store, a signing key and a client config pointing at both."""

    base: Path
    store: Store
    key: Path
    config: Path
    other_key: Path
    trees: dict[str, ObjectId] = field(default_factory=dict)

    def put(self, path: Path) -> ObjectId:
        return put_paths(self.store, [path])

    def publish(self, name: str, revision: int, root: ObjectId, *,
                variants: dict[str, ObjectId] | None = None, baseline: str | None = None,
                expires_in: int = 3600, key: Path | None = None) -> bytes:
        now = int(time.time())
        rel = Release(name, revision, str(root), now - 10, now + expires_in,
                      {k: str(v) for k, v in (variants or {}).items()}, baseline)
        doc = sign(rel, load_secret(key or self.key))
        self.store.write_release(name, revision, doc)
        return doc

    def write_raw_release(self, name: str, revision: int, doc: bytes) -> None:
        self.store.write_release(name, revision, doc)

    @staticmethod
    def tamper(doc: bytes, **changes: object) -> bytes:
        """Change body fields but keep the old signature."""
        outer = json.loads(doc)
        body = json.loads(base64.b64decode(outer["body"]))
        body.update(changes)
        outer["body"] = base64.b64encode(json.dumps(body).encode()).decode()
        return json.dumps(outer).encode()

    @staticmethod
    def unsign(doc: bytes) -> bytes:
        outer = json.loads(doc)
        outer["signature"] = ""
        return json.dumps(outer).encode()


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    store = Store.open(tmp_path / "store", create=True)
    keygen(tmp_path / "release.key")
    keygen(tmp_path / "other.key")
    config = tmp_path / "client.toml"
    config.write_text('trusted_keys = ["release.key.pub"]\nsource = "store"\n'
                      'cache_dir = "cache"\nstate_dir = "state"\nprefetch_min = "1M"\n')
    yield Kit(tmp_path, store, tmp_path / "release.key", config, tmp_path / "other.key")
    store.close()


class Mounter:
    """Mounts releases with ``cas mount --foreground`` as child processes."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def mount(self, release: str, *extra: str, name: str = "mnt") -> Path:
        mp = self.kit.base / name
        mp.mkdir(exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        log = open(self.kit.base / f"{name}.out", "w")  # noqa: SIM115 - closed by the child
        proc = subprocess.Popen([*CAS, "mount", "--foreground", "--config",
                                 str(self.kit.config), release, str(mp), *extra],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append((proc, mp))
        deadline = time.monotonic() + 20
        while not mounted(mp):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mount failed: {self.output(name)}")
            time.sleep(0.02)
        return mp

    def output(self, name: str = "mnt") -> str:
        return (self.kit.base / f"{name}.out").read_text()

    def cleanup(self) -> None:
        """Unmount everything we mounted, then make sure our children are gone."""
        for proc, mp in self.procs:
            if mounted(mp):
                run_cas("umount", "--config", str(self.kit.config), str(mp))
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            if mounted(mp):
                subprocess.run(["fusermount3", "-uz", str(mp)], check=False)


@pytest.fixture
def mounter(kit: Kit) -> Iterator[Mounter]:
    m = Mounter(kit)
    try:
        yield m
    finally:
        m.cleanup()
    leftovers = [str(mp) for _p, mp in m.procs if mounted(mp)]
    assert not leftovers, f"mounts left behind: {leftovers}"
