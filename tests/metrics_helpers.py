"""Checking a metrics exposition the way monitoring reads it.

Every exposition casstore serves (the client's textfile and unix socket, ``cas
serve``'s ``/metrics``) must pass ``promtool check metrics`` (the Prometheus
project's own parser and linter) and parse with ``prometheus_client``'s parser
into series that are never duplicated.  :func:`check_exposition` does both and
returns the samples; :func:`check_http` fetches an ``http://`` URL first and
checks its Content-Type names the text format version 0.0.4 it carries.

:class:`NodeExporter` runs the real ``prometheus-node-exporter`` on loopback with
only the textfile collector, over a folder, for the "several files on one node"
cases.  Every process it starts is stopped by its PID.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from net_fixtures import free_port
from prometheus_client.parser import text_string_to_metric_families

PROMTOOL = shutil.which("promtool")
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
TEXT_FORMAT = "text/plain; version=0.0.4"  # what every casstore exposition says it serves

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian's "
                                    "prometheus package, tools/setup installs it)")
needs_node_exporter = pytest.mark.skipif(NODE_EXPORTER is None,
                                         reason="needs prometheus-node-exporter")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def promtool_check(text: str) -> None:
    """``promtool check metrics`` accepts ``text`` with no lint problem (exit 0)."""
    if PROMTOOL is None:
        pytest.skip("needs promtool")
    p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, f"promtool check metrics: rc {p.returncode}: " \
                              f"{(p.stdout + p.stderr).strip()[:2000]}"


def parse(text: str) -> Samples:
    """{(sample name, sorted labels): value} through prometheus_client's parser; a
    series seen twice fails (node_exporter would drop all but one)."""
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def check_exposition(text: str) -> Samples:
    """promtool's check, then the samples."""
    promtool_check(text)
    return parse(text)


def check_http(url: str) -> Samples:
    """GET ``url`` (e.g. ``cas serve``'s ``http://127.0.0.1:PORT/metrics``): 200, a
    Content-Type of text format 0.0.4, and a body :func:`check_exposition` accepts."""
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.status == 200
        ctype = resp.headers.get("Content-Type", "")
        body = resp.read().decode()
    assert ctype.startswith(TEXT_FORMAT), ctype
    return check_exposition(body)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``."""
    found = [v for (n, ls), v in samples.items()
             if n == name and labels.items() <= dict(ls).items()]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def values(samples: Samples, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of ``name``: (labels, value)."""
    return [(dict(ls), v) for (n, ls), v in samples.items() if n == name]


class NodeExporter:
    """``prometheus-node-exporter`` with only the textfile collector over ``folder``,
    on a free loopback port; :meth:`scrape` returns its ``/metrics`` text and
    :attr:`log` what it logged (its errors about textfiles go there)."""

    def __init__(self, folder: Path, logfile: Path) -> None:
        if NODE_EXPORTER is None:
            pytest.skip("needs prometheus-node-exporter")
        self.port = free_port()
        self.logfile = logfile
        self._log = open(logfile, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{self.port}",
             "--collector.disable-defaults", "--collector.textfile",
             f"--collector.textfile.directory={folder}"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.scrape()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"node_exporter did not start: {self.log}") from None
                time.sleep(0.1)

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.read().decode()

    @property
    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._log.close()

    def __enter__(self) -> NodeExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
