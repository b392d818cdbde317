"""The client config: which keys to trust, where objects come from, where state lives.

A node reads one small TOML file (``/etc/casstore/client.toml`` unless ``--config``
or ``$CAS_CONFIG`` names another).  Everything has a default except the trusted
keys: with none configured, no release can be mounted, which is the safe failure.

Example::

    trusted_keys = ["/etc/casstore/release.pub", "3b6a27bc...64 hex..."]
    source = "/cvmfs/sw.example.org/casstore"   # a store directory, may be read-only
    # or HTTP(S) servers tried in order (fail-over): any static server of a store folder
    # source = ["http://a.example.org/store", "http://b.example.org/store"]
    proxy = "http://squid1:3128;http://squid2:3128;DIRECT"  # or a list; default: $http_proxy
    connect_timeout = 5                         # seconds (HTTP sources)
    read_timeout = 10                           # seconds of silence while reading
    request_timeout = 120                       # seconds for one whole request
    http_parallel = 16                          # requests in flight per source
    object_cache_size = "20G"                   # cache_dir/objects (default: cache_size)
    cache_dir = "/var/cache/casstore"           # the client's own, writable
    state_dir = "/var/lib/casstore"             # seen revisions, status files, logs
    cache_size = "20G"                          # bound of the file cache
    prefetch_min = "4M"                         # files this big are fetched whole
    arch = ""                                   # force a CPU level, e.g. "x86-64-v2"
    metrics_textfile_dir = "/var/lib/prometheus/node-exporter"  # default: no metrics file
    metrics_socket = "/run/casstore/metrics-{id}.sock"  # HTTP GET /metrics; default: off
    metrics_interval = 5                        # seconds between metrics file writes
    log = "syslog"                              # "syslog" (default), "file" or a log file path
    syslog_address = "/dev/log"                 # the syslog/journald socket
    follow = false                              # cas mount follows new revisions
    ttl = "4m"                                  # how often a following mount checks
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from casstore.errors import KeyFileError, UsageError

DEFAULT_PATH = Path("/etc/casstore/client.toml")
ENV_VAR = "CAS_CONFIG"
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MIN_TTL, MAX_TTL = 0.1, 7 * 86400.0
_KNOWN = {"trusted_keys", "source", "cache_dir", "state_dir", "cache_size", "prefetch_min",
          "arch", "proxy", "connect_timeout", "read_timeout", "request_timeout", "http_parallel",
          "object_cache_size", "metrics_textfile_dir", "metrics_socket", "metrics_interval",
          "log", "syslog_address", "follow", "ttl"}
_TIMEOUTS = ("connect_timeout", "read_timeout", "request_timeout")
MAX_TIMEOUT = 3600.0


def parse_size(value: int | str) -> int:
    """``1048576``, ``"512M"``, ``"20G"`` -> bytes."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UsageError(f"not a size: {value!r} (use e.g. 512M or 20G)")
    if isinstance(value, int):
        if value < 0:
            raise UsageError(f"not a size: {value!r} (must not be negative)")
        return value
    m = _SIZE_RE.match(value)
    if not m:
        raise UsageError(f"not a size: {value!r} (use e.g. 512M or 20G)")
    return int(m.group(1)) << (10 * " KMGT".index(m.group(2).upper() or " "))


def parse_duration(value: int | float | str) -> float:
    """``30``, ``"30s"``, ``"4m"``, ``"1h"``, ``"500ms"``, ``"1d"`` -> seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UsageError(f"not a duration: {value!r} (use e.g. 30s, 4m or 1h)")
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise UsageError(f"not a duration: {value!r} (use e.g. 30s, 4m or 1h)")
        return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    return float(value)


@dataclass
class ClientConfig:
    """Settings of one node's client; see the module docstring for the file format."""

    trusted_keys: list[str] = field(default_factory=list)
    # A store folder (Path), one URL (str) or several (list: fail-over); see open_source.
    source: Path | str | list[str] | None = None
    cache_dir: Path = Path("/var/cache/casstore")
    state_dir: Path = Path("/var/lib/casstore")
    cache_size: int = 20 << 30
    prefetch_min: int = 4 << 20
    arch: str | None = None
    path: Path | None = None
    proxy: list[str] = field(default_factory=list)  # [] = the environment's (http_proxy)
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    request_timeout: float = 120.0
    http_parallel: int = 16
    object_cache_size: int | None = None  # None = cache_size
    # Metrics and logs (docs/CLIENT.md, "Metrics and logs").
    metrics_textfile_dir: Path | None = None  # None: no textfile
    metrics_socket: Path | None = None  # may hold "{id}", the mount id; None: off
    metrics_interval: float = 5.0
    log: str | Path = "syslog"  # "syslog" (file if no syslog socket), "file" or a path
    syslog_address: Path = Path("/dev/log")
    # Revision following (casstore.client.follow): off by default, because a following mount
    # gives up "no_open" and day-long kernel timeouts (docs/CLIENT.md, "Following").
    follow: bool = False
    ttl: float = 240.0  # seconds between checks of the release index

    @property
    def objects_cache_dir(self) -> Path:
        """The object cache of HTTP sources, next to the file cache (``files/``)."""
        return self.cache_dir / "objects"

    @property
    def object_cache_bytes(self) -> int:
        return self.cache_size if self.object_cache_size is None else self.object_cache_size

    def trusted(self) -> list[str]:
        """The trusted keys as lower-case hex (parsing .pub files named by path)."""
        from casstore.releases.release import parse_public

        base = self.path.resolve().parent if self.path else Path.cwd()
        out = []
        for k in self.trusted_keys:
            ref = k if not _looks_like_path(k) else str(base / os.path.expanduser(k))
            out.append(parse_public(ref))
        return out

    @property
    def seen_path(self) -> Path:
        return self.state_dir / "seen-revisions.json"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "mounts"


def _looks_like_path(text: str) -> bool:
    return "/" in text or text.endswith(".pub")


def default_path() -> Path:
    """``$CAS_CONFIG`` if set, else ``/etc/casstore/client.toml``."""
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_PATH


def load(path: Path | None = None, *, required: bool = False) -> ClientConfig:
    """Read the config; a missing default file gives the defaults, a bad one an error."""
    explicit = path is not None or ENV_VAR in os.environ
    path = path or default_path()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        if required or explicit:
            raise UsageError(f"client config {path} does not exist: write one with at "
                             f"least trusted_keys = [\"/etc/casstore/release.pub\"] and "
                             f"source = \"STORE-DIR-OR-URL\" (docs/CLIENT.md, Setup), or "
                             f"name another with --config FILE or ${ENV_VAR}") from None
        return ClientConfig()
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"client config {path} is not valid TOML: {exc}") from None
    return from_dict(raw, path)


def from_dict(raw: dict, path: Path | None = None) -> ClientConfig:
    """Validate a parsed TOML table; unknown keys are refused so typos do not hide."""
    unknown = set(raw) - _KNOWN
    if unknown:
        raise UsageError(f"unknown setting(s) in client config: {', '.join(sorted(unknown))}")
    keys = raw.get("trusted_keys", [])
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise KeyFileError("trusted_keys must be a list of hex keys or .pub file paths")
    base = path.resolve().parent if path else Path.cwd()
    cfg = ClientConfig(trusted_keys=keys, path=path)
    for name in ("cache_dir", "state_dir", "arch"):
        if name in raw and not isinstance(raw[name], str):
            raise UsageError(f"client config: {name} must be a string, not {raw[name]!r}")
    if raw.get("source"):
        cfg.source = _source(raw["source"], base)
    for name in ("cache_dir", "state_dir"):
        if raw.get(name):
            setattr(cfg, name, base / Path(raw[name]).expanduser())
    for name in ("cache_size", "prefetch_min"):
        if name in raw:
            setattr(cfg, name, parse_size(raw[name]))
    cfg.arch = raw.get("arch") or None
    _http_settings(cfg, raw)
    _observability(cfg, raw, base)
    _follow_settings(cfg, raw)
    return cfg


LOG_CHOICES = ("syslog", "file")
MAX_METRICS_INTERVAL = 300.0  # files older than PRUNE_AGE_S are taken as a dead daemon's


def _observability(cfg: ClientConfig, raw: dict, base: Path) -> None:
    """``metrics_textfile_dir``, ``metrics_socket``, ``metrics_interval``, ``log`` and
    ``syslog_address``, checked (paths relative to the config file)."""
    for name in ("metrics_textfile_dir", "metrics_socket", "syslog_address", "log"):
        if name in raw and (not isinstance(raw[name], str) or not raw[name]):
            raise UsageError(f"client config: {name} must be a non-empty string, "
                             f"not {raw[name]!r}")
    for name in ("metrics_textfile_dir", "metrics_socket", "syslog_address"):
        if name in raw:
            setattr(cfg, name, base / Path(raw[name]).expanduser())
    if "log" in raw:
        v = raw["log"]
        cfg.log = v if v in LOG_CHOICES else base / Path(v).expanduser()
    if "metrics_interval" in raw:
        v = raw["metrics_interval"]
        if (isinstance(v, bool) or not isinstance(v, (int, float))
                or not 0 < v <= MAX_METRICS_INTERVAL):
            raise UsageError(f"client config: metrics_interval must be a number of seconds "
                             f"in (0, {MAX_METRICS_INTERVAL:.0f}], not {v!r}")
        cfg.metrics_interval = float(v)


def _is_url(text: str) -> bool:
    return "://" in text


def _source(value: object, base: Path) -> Path | str | list[str]:
    """A store folder (relative to the config file), a URL, or a list of URLs."""
    if isinstance(value, str):
        return value if _is_url(value) else base / Path(value).expanduser()
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, str) and v for v in value)):
        raise UsageError(f"client config: source must be a folder, a URL or a list of URLs, "
                         f"not {value!r}")
    if len(value) == 1:
        return _source(value[0], base)
    if not all(_is_url(v) for v in value):
        raise UsageError("client config: a list of sources must all be http(s):// URLs "
                         "(fail-over between servers)")
    return list(value)


def _http_settings(cfg: ClientConfig, raw: dict) -> None:
    """``proxy``, the timeouts, ``http_parallel`` and ``object_cache_size``, checked."""
    if "proxy" in raw:
        proxy = raw["proxy"]
        if isinstance(proxy, str):
            proxy = [proxy]
        if not isinstance(proxy, list) or not all(isinstance(p, str) for p in proxy):
            raise UsageError("client config: proxy must be a string or a list of strings "
                             "(proxy URLs or DIRECT)")
        from casstore.sources.transport import parse_proxies  # checks each URL

        try:
            cfg.proxy = list(parse_proxies(proxy))
        except UsageError as exc:
            raise UsageError(f"client config: {exc}") from None
    for name in _TIMEOUTS:
        if name in raw:
            v = raw[name]
            if (isinstance(v, bool) or not isinstance(v, (int, float))
                    or not 0 < v <= MAX_TIMEOUT):
                raise UsageError(f"client config: {name} must be a number of seconds in "
                                 f"(0, {MAX_TIMEOUT:.0f}], not {v!r}")
            setattr(cfg, name, float(v))
    if "http_parallel" in raw:
        v = raw["http_parallel"]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1024:
            raise UsageError(f"client config: http_parallel must be an integer in 1..1024, "
                             f"not {v!r}")
        cfg.http_parallel = v
    if "object_cache_size" in raw:
        cfg.object_cache_size = parse_size(raw["object_cache_size"])


def _follow_settings(cfg: ClientConfig, raw: dict) -> None:
    """``follow`` (a boolean) and ``ttl`` (a duration within [0.1 s, 7 d]), checked."""
    if "follow" in raw:
        if not isinstance(raw["follow"], bool):
            raise UsageError(f"client config: follow must be true or false, not {raw['follow']!r}")
        cfg.follow = raw["follow"]
    if "ttl" in raw:
        try:
            ttl = parse_duration(raw["ttl"])
        except UsageError as exc:
            raise UsageError(f"client config: ttl: {exc}") from None
        if not MIN_TTL <= ttl <= MAX_TTL:
            raise UsageError(f"client config: ttl must be between 100ms and 7d, "
                             f"not {raw['ttl']!r}")
        cfg.ttl = ttl
