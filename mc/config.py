"""The MC's configuration: the one home of every setting's name, default and rule.

Values come from flags, then the environment, then the defaults here. Secrets
(the service token, the GC tokens, a Redis password) come only from the
environment or from files, never from flag values, and are redacted in every
repr so they cannot reach a log line.
"""

import base64
import binascii
import importlib.util
import os
import re
import secrets
import socket
from dataclasses import dataclass, field, fields, replace
from urllib.parse import urlsplit

from mc.errors import ConfigError

ID_RE = re.compile(r"[A-Za-z0-9_-]{1,255}")
MAX_REGION_LEN = 50
MAX_URL_LEN = 255
MAX_UINT31 = 2**31 - 1
MAX_TOKEN_BYTES = 8192
TOKEN_RE = re.compile(r"[\x21-\x7e]+")
MIN_BINDING_SECRET_BYTES = 32
MAX_CLIENT_SECRET_CHARS = 1024
DEFAULT_WEBTRANSPORT_PORT = 4433


class Secret:
    """A value that never shows itself in a repr or str."""

    __slots__ = ("_value",)

    def __init__(self, value):
        self._value = value

    def reveal(self):
        return self._value

    def __repr__(self):
        return "Secret('<redacted>')"

    __str__ = __repr__

    def __eq__(self, other):
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self):
        return hash(self._value)


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self):
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RedisTarget:
    """Where the fleet's Redis is; ``password`` is a Secret or None. Under
    Sentinel, ``sentinels`` holds the sentinels' ``(host, port)`` (``host``
    and ``port`` are the first of them) and ``service`` the primary's name.
    ``ca_path``: the CA bundle a TLS Redis is verified against (None: the
    system's roots)."""

    scheme: str
    host: str
    port: int
    db: int
    password: Secret = field(default=None)
    username: str = None
    sentinels: tuple = ()
    service: str = None
    ca_path: str = None

    @property
    def tls(self):
        return self.scheme in ("rediss", SENTINEL_TLS_SCHEME)

    def __str__(self):
        auth = ":<redacted>@" if self.password is not None else ""
        if self.username:
            auth = f"{self.username}{auth or '@'}"
        if self.sentinels:
            hosts = ",".join(str(Address(h, p)) for h, p in self.sentinels)
            return f"{self.scheme}://{auth}{hosts}/{self.service}/{self.db}"
        return f"{self.scheme}://{auth}{self.host}:{self.port}/{self.db}"


def _advertise_host():
    """This host's name as other hosts would reach it; never ``localhost``."""
    for name in (socket.getfqdn(), socket.gethostname()):
        if name and not name.startswith("localhost") and name not in ("0.0.0.0", "::"):
            return name
    return socket.gethostname() or "mc"


def default_mc_id():
    """``mc-<short hostname>``, made to pass the GC's id rule: the same on
    every start on one host, so a restarted MC finds the meetings it owns in
    Redis (a random part would make it a stranger to them). Two MCs on one
    host need explicit ids."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0]) or "host"
    return f"mc-{host[:200]}"


def parse_id(option, value):
    if not ID_RE.fullmatch(value):
        raise ConfigError(
            option,
            f"{value!r} is not a valid id (1-255 letters, digits, '-' or '_')",
        )
    return value


def parse_region(option, value):
    if not value or len(value) > MAX_REGION_LEN:
        raise ConfigError(option, f"must be 1-{MAX_REGION_LEN} characters")
    return value


def parse_http_url(option, value):
    """A URL the GC accepts: http(s)://host[:port][/path], at most 255 chars."""
    if len(value) > MAX_URL_LEN:
        raise ConfigError(option, f"must be at most {MAX_URL_LEN} characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise ConfigError(option, f"{value!r} is not a valid URL ({e})") from None
    if parts.scheme not in ("http", "https") or not value.startswith(parts.scheme + "://"):
        raise ConfigError(option, f"{value!r} must start with http:// or https://")
    if not parts.hostname:
        raise ConfigError(option, f"{value!r} has no host")
    if parts.username or parts.password:
        raise ConfigError(option, "must not carry credentials")
    return value


def parse_gc_url(option, value):
    parse_http_url(option, value)
    parts = urlsplit(value)
    if not parts.port:
        raise ConfigError(option, f"{value!r} must name a port")
    return value


def parse_address(option, value):
    """``host:port`` or ``[v6]:port``; port 0 asks the kernel for a free one."""
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d{1,5})$", value) or re.match(
        r"^([A-Za-z0-9.-]+):(\d{1,5})$", value
    )
    if not m:
        raise ConfigError(option, f"{value!r} is not host:port")
    port = int(m.group(2))
    if port > 65535:
        raise ConfigError(option, f"port {port} is out of range 0-65535")
    return Address(m.group(1), port)


def _int_range(lo, hi):
    def parse(option, value):
        try:
            n = int(value, 10) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            raise ConfigError(option, f"{value!r} is not an integer") from None
        if not lo <= n <= hi:
            raise ConfigError(option, f"{n} is out of range {lo}-{hi}")
        return n

    return parse


def _seconds(lo, hi):
    def parse(option, value):
        try:
            n = float(value)
        except (TypeError, ValueError):
            raise ConfigError(option, f"{value!r} is not a number of seconds") from None
        if not lo <= n <= hi:
            raise ConfigError(option, f"{n:g} is out of range {lo:g}-{hi:g} seconds")
        return n

    return parse


SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_TLS_SCHEME = "rediss+sentinel"
_SERVICE_RE = re.compile(r"[A-Za-z0-9._-]{1,255}")
_SENTINEL_RE = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+))(?::(\d{1,5}))?")


def _parse_sentinel_url(option, value):
    """``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]``
    (``rediss+sentinel://``: TLS to the sentinels and the nodes); the user and
    password are the data nodes', the sentinels' port defaults to 26379."""
    scheme, _, rest = value.partition("://")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        username, _, password = userinfo.partition(":")
    sentinels = []
    for host in hosts.split(","):
        m = _SENTINEL_RE.fullmatch(host)
        if not m or int(m.group(3) or 26379) > 65535:
            raise ConfigError(option, "sentinels must be host[:port], separated by commas")
        sentinels.append((m.group(1) or m.group(2), int(m.group(3) or 26379)))
    service, _, db = path.partition("/")
    if not _SERVICE_RE.fullmatch(service):
        raise ConfigError(option, "must name the primary: redis+sentinel://hosts/service[/db]")
    if db and not db.isdigit():
        raise ConfigError(option, f"database {db!r} is not an integer")
    host, port = sentinels[0]
    return RedisTarget(scheme, host, port, int(db) if db else 0,
                       Secret(password) if password else None, username or None,
                       tuple(sentinels), service)


def parse_redis_url(option, value):
    """``redis://[[user]:password@]host[:port][/db]``; ``rediss://`` for TLS;
    ``redis+sentinel://`` (``rediss+sentinel://``) for a Sentinel-managed primary."""
    if value.startswith((SENTINEL_SCHEME + "://", SENTINEL_TLS_SCHEME + "://")):
        return _parse_sentinel_url(option, value)
    try:
        parts = urlsplit(value)
        port = parts.port or 6379
    except ValueError:
        raise ConfigError(option, "is not a valid redis:// URL") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(option, "must look like redis://[:password@]host[:port][/db] or "
                          "redis+sentinel://host[:port][,host[:port]...]/service[/db]")
    path = parts.path.lstrip("/")
    if path and not path.isdigit():
        raise ConfigError(option, f"database {path!r} is not an integer")
    db = int(path) if path else 0
    password = Secret(parts.password) if parts.password else None
    return RedisTarget(parts.scheme, parts.hostname, port, db, password, parts.username or None)


def parse_jwks_url(option, value):
    """Where the Auth Controller's JWKS is: ``https://``, ``http://`` or
    ``file://`` (a local file, for a mounted secret or tests)."""
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ConfigError(option, f"{value!r} is not a valid URL") from None
    if parts.scheme == "file":
        if not parts.path:
            raise ConfigError(option, f"{value!r} names no file")
        return value
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(option, f"{value!r} must be an https://, http:// or file:// URL")
    if parts.username or parts.password:
        raise ConfigError(option, "must not carry credentials")
    return value


def parse_origins(option, value):
    """Comma-separated origins (``https://app.example.com``); empty: any."""
    origins = tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
            raise ConfigError(option, f"{origin!r} is not an origin (scheme://host[:port])")
    return origins


def parse_binding_secret(option, value):
    """Base64 of at least 32 random bytes."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (ValueError, binascii.Error):
        raise ConfigError(option, "is not base64") from None
    if len(raw) < MIN_BINDING_SECRET_BYTES:
        raise ConfigError(option, f"must decode to at least {MIN_BINDING_SECRET_BYTES} bytes, "
                          f"not {len(raw)}")
    return Secret(raw)


def parse_choice(*choices):
    def parse(option, value):
        if value not in choices:
            raise ConfigError(option, f"{value!r} is not one of {', '.join(choices)}")
        return value

    return parse


def parse_python_gc_thresholds(option, value):
    """``g0,g1,g2`` for gc.set_threshold, or ``python``: the interpreter's
    own (700,10,10) and no freeze (None)."""
    if value == "python":
        return None
    parts = value.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(option, f"{value!r} is not g0,g1,g2 (three integers) or python")
    thresholds = tuple(int(p) for p in parts)
    if thresholds[0] < 1:
        raise ConfigError(option, "g0 must be at least 1 (0 disables the collector)")
    return thresholds


def parse_token(option, value):
    """A bearer token the GC would accept: 1-8192 printable ASCII bytes."""
    value = value.strip()
    if not value:
        raise ConfigError(option, "is empty")
    if len(value.encode()) > MAX_TOKEN_BYTES:
        raise ConfigError(option, f"is longer than {MAX_TOKEN_BYTES} bytes")
    if not TOKEN_RE.fullmatch(value):
        raise ConfigError(option, "must be printable ASCII without spaces")
    return Secret(value)


def parse_client_secret(option, value):
    """The MC's client secret at the Auth Controller: 1-1024 printable ASCII
    characters (surrounding whitespace, as a file's newline, dropped)."""
    value = value.strip()
    if not value or len(value) > MAX_CLIENT_SECRET_CHARS or not TOKEN_RE.fullmatch(value):
        raise ConfigError(option, f"must be 1-{MAX_CLIENT_SECRET_CHARS} printable ASCII "
                          "characters without spaces")
    return Secret(value)


def parse_token_list(option, value):
    tokens = [t for t in re.split(r"[,\s]+", value) if t]
    if not tokens:
        raise ConfigError(option, "holds no token")
    return tuple(parse_token(option, t) for t in tokens)


@dataclass(frozen=True)
class Setting:
    """One plain (non-secret) setting: its env name, flag, default and rule."""

    name: str
    env: str
    flag: str
    default: object
    parse: object
    help: str

    @property
    def option(self):
        return f"{self.env} / --{self.flag}"


SETTINGS = (
    Setting("mc_id", "MC_ID", "mc-id", None, parse_id,
            "This MC's id at the GC; two MCs on one host need their own [default: "
            "mc-<short hostname>, stable across restarts]"),
    Setting("region", "MC_REGION", "region", "us-east-1", parse_region, "Region this MC serves"),
    Setting("gc_url", "GC_GRPC_URL", "gc-url", "http://localhost:50051", parse_gc_url,
            "GC gRPC URL; https:// means TLS"),
    Setting("gc_api", "MC_GC_API", "gc-api", "auto", parse_choice("auto", "v1", "legacy"),
            "Dialect of the calls to the GC: v1 (dark_tower.internal.v1), legacy "
            "(dark_tower.internal) or auto (v1 first, then the one that last worked; "
            "UNIMPLEMENTED is retried at once in the other)"),
    Setting("ac_endpoint", "AC_ENDPOINT", "ac-endpoint", None, parse_http_url,
            "The Auth Controller's base URL; with MC_CLIENT_ID and MC_CLIENT_SECRET the MC "
            "gets its service token there [default: static MC_SERVICE_TOKEN]"),
    Setting("client_id", "MC_CLIENT_ID", "client-id", None, None,
            "This MC's client id at the Auth Controller (with AC_ENDPOINT)"),
    Setting("gc_ca_file", "MC_GC_CA_FILE", "gc-ca-file", None, None,
            "CA bundle (PEM) to verify the GC's TLS certificate [default: system roots]"),
    Setting("mh_ca_file", "MC_MH_CA_FILE", "mh-ca-file", None, None,
            "CA bundle (PEM) to verify https:// media handlers' gRPC certificates "
            "[default: system roots]"),
    Setting("redis_url", "REDIS_URL", "redis-url", "redis://127.0.0.1:6379/0", parse_redis_url,
            "The fleet's Redis; a password may be given in the URL; rediss:// means TLS"),
    Setting("redis_ca", "MC_REDIS_CA_PATH", "redis-ca", None, None,
            "CA bundle (PEM) to verify a rediss:// Redis's certificate [default: system roots]"),
    Setting("grpc_listen", "MC_GRPC_BIND_ADDRESS", "grpc-listen", "0.0.0.0:50052", parse_address,
            "host:port the MC's gRPC server listens on"),
    Setting("grpc_advertise", "MC_GRPC_ADVERTISE_URL", "grpc-advertise", None, parse_http_url,
            "gRPC URL the GC should call [default: http://<FQDN>:<grpc port>, https:// "
            "with TLS]"),
    Setting("grpc_tls_cert", "MC_GRPC_TLS_CERT_PATH", "grpc-tls-cert", None, None,
            "Certificate chain (PEM) of the gRPC server; with its key the server speaks TLS "
            "[default: plaintext]"),
    Setting("grpc_tls_key", "MC_GRPC_TLS_KEY_PATH", "grpc-tls-key", None, None,
            "Private key (PEM) of the gRPC server's certificate"),
    Setting("grpc_tls_client_ca", "MC_GRPC_TLS_CLIENT_CA_PATH", "grpc-tls-client-ca", None,
            None, "CA bundle (PEM): the GC must present a certificate it signed (mutual TLS) "
            "[default: no client certificate asked]"),
    Setting("webtransport_listen", "MC_WEBTRANSPORT_BIND_ADDRESS", "webtransport-listen",
            f"0.0.0.0:{DEFAULT_WEBTRANSPORT_PORT}", parse_address,
            "host:port (UDP) where participants' WebTransport sessions arrive"),
    Setting("webtransport_advertise", "MC_WEBTRANSPORT_ADVERTISE_URL", "webtransport-advertise",
            None, parse_http_url, "WebTransport URL for clients; its path is the session path "
            "[default: https://<FQDN>:<WebTransport port>]"),
    Setting("tls_cert", "MC_TLS_CERT_PATH", "tls-cert", None, None,
            "Certificate chain (PEM) of the WebTransport endpoint; required"),
    Setting("tls_key", "MC_TLS_KEY_PATH", "tls-key", None, None,
            "Private key (PEM) of that certificate; required"),
    Setting("allowed_origins", "MC_WEBTRANSPORT_ALLOWED_ORIGINS", "allowed-origins", "",
            parse_origins, "Comma-separated origins allowed to open sessions [default: any]"),
    Setting("jwks_url", "AC_JWKS_URL", "jwks-url", None, parse_jwks_url,
            "The Auth Controller's JWKS (https://, http:// or file://); required"),
    Setting("token_audience", "MC_TOKEN_AUDIENCE", "token-audience", None, None,
            "Required 'aud' of meeting tokens [default: not checked]"),
    Setting("clock_skew", "MC_CLOCK_SKEW_SECONDS", "clock-skew", 5.0, _seconds(0, 300),
            "Seconds of clock skew allowed on a meeting token's exp, iat and nbf"),
    Setting("max_token_lifetime", "MC_MAX_TOKEN_LIFETIME_SECONDS", "max-token-lifetime",
            86400.0, _seconds(1, 30 * 86400),
            "Longest a meeting token may be valid (exp - iat); a longer one is refused"),
    Setting("max_participants_per_meeting", "MC_MAX_PARTICIPANTS_PER_MEETING",
            "max-participants-per-meeting", 1000, _int_range(1, MAX_UINT31),
            "Most participants in one meeting"),
    Setting("max_pending_sessions", "MC_MAX_PENDING_SESSIONS", "max-pending-sessions", 1000,
            _int_range(1, MAX_UINT31), "Most WebTransport connections that have not joined yet "
            "(past half of it, new clients must answer a QUIC retry first)"),
    Setting("max_pending_per_address", "MC_MAX_PENDING_SESSIONS_PER_ADDRESS",
            "max-pending-per-address", 20, _int_range(1, MAX_UINT31),
            "Most WebTransport connections that have not joined yet from one IP address"),
    Setting("disconnect_grace", "MC_DISCONNECT_GRACE_PERIOD_SECONDS", "disconnect-grace", 30.0,
            _seconds(0, 3600), "Seconds a participant whose connection was lost keeps its place"),
    Setting("health_listen", "MC_HEALTH_BIND_ADDRESS", "health-listen", "0.0.0.0:8081",
            parse_address, "host:port of /healthz, /readyz and /metrics"),
    Setting("max_meetings", "MC_MAX_MEETINGS", "max-meetings", 1000, _int_range(1, MAX_UINT31),
            "Most meetings hosted at once"),
    Setting("max_participants", "MC_MAX_PARTICIPANTS", "max-participants", 10000,
            _int_range(1, MAX_UINT31), "Most participants across all meetings"),
    Setting("participant_estimate", "MC_PARTICIPANT_ESTIMATE", "participant-estimate", 10,
            _int_range(0, MAX_UINT31), "Participants a new meeting is assumed to bring"),
    Setting("shutdown_grace", "MC_SHUTDOWN_GRACE_SECONDS", "shutdown-grace", 30.0,
            _seconds(0, 3600), "Seconds shutdown waits for participants to move elsewhere"),
    Setting("meeting_idle", "MC_MEETING_IDLE_SECONDS", "meeting-idle", 300.0,
            _seconds(1, 86400), "Seconds a meeting may have no participants before it ends"),
    Setting("redis_replica_acks", "MC_REDIS_REPLICA_ACKS", "redis-replica-acks", None,
            _int_range(0, 16), "Online replicas that must acknowledge a claim before it counts "
            "(WAIT) [default: 1 under Sentinel, where 0 is refused; 0 otherwise]"),
    Setting("redis_timeout", "MC_REDIS_TIMEOUT_SECONDS", "redis-timeout", 3.0,
            _seconds(0.1, 4.5), "Seconds a Redis operation may take; a claim that timed out is "
            "read back within as long again, inside the GC's 10 s call deadline"),
    Setting("ownership_lease", "MC_OWNERSHIP_LEASE_SECONDS", "ownership-lease", 0.0,
            _seconds(0, 20), "Seconds this MC keeps hosting without Redis confirming its "
            "ownership; below the GC's 30 s staleness [default, 0: the GC's fast heartbeat "
            "interval]"),
    Setting("python_gc_thresholds", "MC_PYTHON_GC_THRESHOLDS", "python-gc-thresholds",
            "50000,20,100", parse_python_gc_thresholds,
            "Python's garbage collector: g0,g1,g2 thresholds, start-up's objects frozen "
            "once started; python leaves the interpreter's (700,10,10) and freezes nothing"),
    Setting("lag_threshold", "MC_REACTOR_LAG_THRESHOLD", "lag-threshold", 0.5,
            _seconds(0.01, 60), "Reactor lag (seconds), averaged over the comprehensive "
            "interval, above which health is DEGRADED"),
    Setting("gc_deadline", "MC_GC_DEADLINE_SECONDS", "gc-deadline", 10.0, _seconds(0.1, 60),
            "Seconds each call to the GC may take before it is abandoned"),
    Setting("http_idle", "MC_HTTP_IDLE_SECONDS", "http-idle", 30.0, _seconds(0.1, 3600),
            "Seconds an HTTP connection may stay silent before it is closed"),
    Setting("file_watch", "MC_FILE_WATCH", "file-watch", "auto",
            parse_choice("auto", "inotify", "poll", "off"),
            "How a changed secret or certificate file is noticed and reloaded as SIGHUP does: "
            "auto (inotify where available, else poll), inotify, poll (a stat every 2 s) or "
            "off (SIGHUP only)"),
    Setting("cert_pair_grace", "MC_CERT_PAIR_GRACE_SECONDS", "cert-pair-grace", 30.0,
            _seconds(0, 3600), "Seconds a rotated certificate waits for its key (or the key "
            "for its certificate) before the reload is refused and the old pair kept"),
    Setting("log_format", "MC_LOG_FORMAT", "log-format", "text", parse_choice("text", "json"),
            "Log format: text or json (one JSON object per line)"),
    Setting("log_level", "MC_LOG_LEVEL", "log-level", "info",
            parse_choice("debug", "info", "warn", "error", "critical"),
            "Least severe log level written: debug, info, warn, error or critical"),
)

SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}

SERVICE_TOKEN = ("MC_SERVICE_TOKEN", "MC_SERVICE_TOKEN_FILE", "service-token-file")
GC_TOKENS = ("MC_GC_TOKENS", "MC_GC_TOKENS_FILE", "gc-tokens-file")
CLIENT_SECRET = ("MC_CLIENT_SECRET", "MC_CLIENT_SECRET_FILE", "client-secret-file")
BINDING_SECRET = ("MC_BINDING_TOKEN_SECRET", "MC_BINDING_TOKEN_SECRET_FILE",
                  "binding-token-secret-file")
INSECURE_NO_AUTH_FLAG = "insecure-no-auth"
INSECURE_NO_AUTH_ENV = "MC_INSECURE_NO_AUTH"
INSECURE_NO_TLS_FLAG = "insecure-no-tls"
INSECURE_NO_TLS_ENV = "MC_INSECURE_NO_TLS"


@dataclass(frozen=True)
class EnvSetting:
    """A setting read from the environment only: what it chooses is bound
    when a module is imported, before any flag is parsed."""

    env: str
    default: str
    choices: tuple
    help: str


QUIC_ENGINE = EnvSetting(
    "MC_QUIC_ENGINE", "aioquic", ("aioquic", "qh3"),
    "The QUIC/HTTP-3 engine (mc/participants/engine.py): aioquic in production; qh3 for "
    "the participant benchmark only")


def quic_engine(environ):
    """MC_QUIC_ENGINE's value, or ConfigError if it names no engine we know."""
    value = environ.get(QUIC_ENGINE.env) or QUIC_ENGINE.default
    if value not in QUIC_ENGINE.choices:
        raise ConfigError(QUIC_ENGINE.env,
                          f"{value!r} is not one of {', '.join(QUIC_ENGINE.choices)}")
    return value


@dataclass(frozen=True)
class Config:
    """Validated settings; secrets are ``Secret`` so the repr redacts them."""

    mc_id: str
    region: str
    gc_url: str
    gc_api: str
    ac_endpoint: str
    client_id: str
    gc_ca_file: str
    mh_ca_file: str
    redis: RedisTarget
    grpc_listen: Address
    grpc_advertise: str
    grpc_tls_cert: str
    grpc_tls_key: str
    grpc_tls_client_ca: str
    webtransport_listen: Address
    webtransport_advertise: str
    tls_cert: str
    tls_key: str
    allowed_origins: tuple
    jwks_url: str
    token_audience: str
    clock_skew: float
    max_token_lifetime: float
    max_participants_per_meeting: int
    max_pending_sessions: int
    max_pending_per_address: int
    disconnect_grace: float
    health_listen: Address
    max_meetings: int
    max_participants: int
    participant_estimate: int
    shutdown_grace: float
    meeting_idle: float
    ownership_lease: float
    python_gc_thresholds: tuple
    redis_replica_acks: int
    redis_timeout: float
    lag_threshold: float
    gc_deadline: float
    http_idle: float
    file_watch: str
    cert_pair_grace: float
    log_format: str
    log_level: str
    quic_engine: str
    service_token: Secret
    gc_tokens: tuple
    binding_secret: Secret
    client_secret: Secret = None
    insecure_no_auth: bool = False
    insecure_no_tls: bool = False
    #: The secrets read from files, which SIGHUP reads again.
    secret_files: tuple = ()

    @property
    def service_identity_from_ac(self):
        """The service token comes from the Auth Controller (not a static one)."""
        return self.ac_endpoint is not None

    @property
    def gc_tls(self):
        return self.gc_url.startswith("https://")

    @property
    def grpc_tls(self):
        """The gRPC server speaks TLS."""
        return self.grpc_tls_cert is not None

    @property
    def webtransport_path(self):
        """The path sessions must CONNECT to: the advertised URL's, or ``/``."""
        return urlsplit(self.webtransport_advertise).path or "/"

    @property
    def gc_target(self):
        """``host:port`` for grpc.*_channel."""
        parts = urlsplit(self.gc_url)
        return str(Address(parts.hostname, parts.port))

    def describe(self):
        """A dict safe to log: secrets and the Redis password are redacted."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "gc_tokens":
                v = f"<{len(v)} redacted>"
            elif f.name == "secret_files":
                v = [f"{sf.option}={sf.path}" for sf in v]
            elif f.name == "jwks_url":
                v = urlsplit(v)._replace(query="", fragment="").geturl()
            elif isinstance(v, (Secret, RedisTarget, Address)):
                v = str(v)
            out[f.name] = v
        return out


def _read_secret_file(option, path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(option, f"cannot read {path!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(option, f"{path!r} is not UTF-8 text") from None


def _secret_source(flags, environ, spec):
    """The raw secret text, the option it came from and its file (None for a
    value), by precedence: the flag's file, then the env value, then the env
    file."""
    env_value, env_file, flag = spec
    if flags.get(flag):
        opt = f"--{flag}"
        return opt, _read_secret_file(opt, flags[flag]), flags[flag]
    if environ.get(env_value) and environ.get(env_file):
        raise ConfigError(f"{env_value} / {env_file}", "set only one of them")
    if environ.get(env_value) is not None:
        return env_value, environ[env_value], None
    if environ.get(env_file):
        return env_file, _read_secret_file(env_file, environ[env_file]), environ[env_file]
    return f"{env_value} (or {env_file} / --{flag})", None, None


@dataclass(frozen=True)
class SecretFile:
    """A secret that came from a file, so that SIGHUP can read it again:
    ``name`` is its Config field, ``option`` the setting the operator used."""

    name: str
    option: str
    path: str

    def read(self):
        """The file's secret parsed afresh, or ConfigError naming the option
        (never the content)."""
        parse = {"service_token": parse_token, "gc_tokens": parse_token_list,
                 "binding_secret": parse_binding_secret,
                 "client_secret": parse_client_secret}[self.name]
        return parse(self.option, _read_secret_file(self.option, self.path))


def _switch(flags, environ, flag, env):
    """An on/off option: the flag, or the env variable set to 1, true or yes."""
    return bool(flags.get(flag)) or environ.get(env, "").lower() in ("1", "true", "yes")


def _check_tls_files(values):
    """The TLS files exist and come in the combinations that make sense."""
    for name in ("grpc_tls_cert", "grpc_tls_key", "grpc_tls_client_ca", "redis_ca"):
        if values[name] is not None and not os.path.isfile(values[name]):
            raise ConfigError(SETTINGS_BY_NAME[name].option, "file does not exist")
    cert, key = values["grpc_tls_cert"], values["grpc_tls_key"]
    if (cert is None) != (key is None):
        missing, other = ("grpc_tls_key", "certificate") if key is None else \
            ("grpc_tls_cert", "key")
        raise ConfigError(SETTINGS_BY_NAME[missing].option,
                          f"is required with the gRPC server's {other}")
    if values["grpc_tls_client_ca"] is not None and cert is None:
        raise ConfigError(SETTINGS_BY_NAME["grpc_tls_client_ca"].option,
                          "needs the gRPC server's own certificate and key (mutual TLS is "
                          "TLS first)")
    if cert is not None and values["insecure_no_tls"]:
        raise ConfigError(f"--{INSECURE_NO_TLS_FLAG}",
                          "contradicts the gRPC server's certificate; give one or the other")
    if values["redis_ca"] is not None and not values["redis_url"].tls:
        raise ConfigError(SETTINGS_BY_NAME["redis_ca"].option,
                          "is only used with a rediss:// REDIS_URL")


def _service_identity(flags, environ, values, files):
    """With AC_ENDPOINT: check MC_CLIENT_ID and read the client secret into
    ``values`` (its file, if any, into ``files`` for SIGHUP); a static service
    token beside them is refused, so that which identity is used is never a
    guess. Returns whether the identity comes from the Auth Controller."""
    option, raw, path = _secret_source(flags, environ, CLIENT_SECRET)
    if values["ac_endpoint"] is None:
        for name, given in (("client_id", values["client_id"] is not None),
                            ("client_secret", raw is not None)):
            if given:
                where = SETTINGS_BY_NAME["client_id"].option if name == "client_id" else option
                raise ConfigError(where, "is only used with AC_ENDPOINT")
        return False
    if not values["client_id"] or not TOKEN_RE.fullmatch(values["client_id"]) or \
            len(values["client_id"]) > MAX_URL_LEN:
        raise ConfigError(SETTINGS_BY_NAME["client_id"].option,
                          f"is required with AC_ENDPOINT: 1-{MAX_URL_LEN} printable ASCII "
                          "characters without spaces")
    if raw is None:
        raise ConfigError(option, "is required with AC_ENDPOINT")
    values["client_secret"] = parse_client_secret(option, raw)
    if path:
        files.append(SecretFile("client_secret", option, path))
    static_option, static_raw, _ = _secret_source(flags, environ, SERVICE_TOKEN)
    if static_raw is not None:
        raise ConfigError(static_option, "contradicts AC_ENDPOINT: the service token comes "
                          "from the Auth Controller; set one or the other")
    return True


def load(flags=None, environ=None):
    """Build a Config from flags (``{flag-name: str}``; None or missing means
    unset) over the environment over the defaults. Raises ConfigError naming
    the first bad option."""
    flags = flags or {}
    environ = os.environ if environ is None else environ
    values = {}
    for s in SETTINGS:
        raw = flags.get(s.flag)
        option = f"--{s.flag}"
        if raw is None and environ.get(s.env) not in (None, ""):
            raw, option = environ[s.env], s.env
        if raw is None:
            raw, option = s.default, s.option
        values[s.name] = raw if raw is None or s.parse is None else s.parse(option, raw)

    for name in ("gc_ca_file", "mh_ca_file"):
        if values[name] is not None and not os.path.isfile(values[name]):
            raise ConfigError(SETTINGS_BY_NAME[name].option, "file does not exist")
    for name, what in (("tls_cert", "the WebTransport certificate chain (PEM)"),
                       ("tls_key", "the WebTransport private key (PEM)"),
                       ("jwks_url", "where meeting tokens' keys are")):
        if values[name] is None:
            raise ConfigError(SETTINGS_BY_NAME[name].option, f"is required: {what}")
    for name in ("tls_cert", "tls_key"):
        if not os.path.isfile(values[name]):
            raise ConfigError(SETTINGS_BY_NAME[name].option, "file does not exist")
    values["quic_engine"] = quic_engine(environ)
    if importlib.util.find_spec(values["quic_engine"]) is None:
        raise ConfigError(QUIC_ENGINE.env, f"{values['quic_engine']} is not installed")
    values["insecure_no_tls"] = _switch(flags, environ, INSECURE_NO_TLS_FLAG, INSECURE_NO_TLS_ENV)
    _check_tls_files(values)
    values["redis"] = replace(values.pop("redis_url"), ca_path=values.pop("redis_ca"))
    sentinel = bool(values["redis"].sentinels)
    if values["redis_replica_acks"] is None:
        values["redis_replica_acks"] = 1 if sentinel else 0
    elif sentinel and values["redis_replica_acks"] == 0:
        raise ConfigError(SETTINGS_BY_NAME["redis_replica_acks"].option,
                          "must be at least 1 under Sentinel: a claim no replica holds can "
                          "vanish in a failover and its generation be handed out again")
    if values["mc_id"] is None:
        values["mc_id"] = default_mc_id()

    host = _advertise_host()
    if values["grpc_advertise"] is None:
        if values["grpc_listen"].port == 0:
            raise ConfigError(SETTINGS_BY_NAME["grpc_advertise"].option,
                              "required when the gRPC port is 0")
        scheme = "https" if values["grpc_tls_cert"] else "http"
        values["grpc_advertise"] = f"{scheme}://{host}:{values['grpc_listen'].port}"
    elif values["grpc_tls_cert"] and not values["grpc_advertise"].startswith("https://"):
        raise ConfigError(SETTINGS_BY_NAME["grpc_advertise"].option,
                          "must be https:// when the gRPC server speaks TLS")
    if values["webtransport_advertise"] is None:
        if values["webtransport_listen"].port == 0:
            raise ConfigError(SETTINGS_BY_NAME["webtransport_advertise"].option,
                              "required when the WebTransport port is 0")
        values["webtransport_advertise"] = f"https://{host}:{values['webtransport_listen'].port}"

    files = []
    from_ac = _service_identity(flags, environ, values, files)
    if not from_ac:
        option, raw, path = _secret_source(flags, environ, SERVICE_TOKEN)
        if raw is None:
            raise ConfigError(option, "is required (the bearer token the MC sends to the GC) "
                              "unless AC_ENDPOINT, MC_CLIENT_ID and MC_CLIENT_SECRET are set")
        values["service_token"] = parse_token(option, raw)
        if path:
            files.append(SecretFile("service_token", option, path))
    else:
        values["service_token"] = None

    insecure = _switch(flags, environ, INSECURE_NO_AUTH_FLAG, INSECURE_NO_AUTH_ENV)
    option, raw, path = _secret_source(flags, environ, GC_TOKENS)
    if raw is None:
        if not (insecure or from_ac):
            raise ConfigError(option, "is required unless AC_ENDPOINT (the GC's tokens are "
                              "then the Auth Controller's) or --insecure-no-auth is given")
        values["gc_tokens"] = ()
    else:
        values["gc_tokens"] = parse_token_list(option, raw)
        if path:
            files.append(SecretFile("gc_tokens", option, path))
    values["insecure_no_auth"] = insecure

    option, raw, path = _secret_source(flags, environ, BINDING_SECRET)
    # Unset: a random one, so binding tokens still work for this process's life.
    values["binding_secret"] = (Secret(secrets.token_bytes(MIN_BINDING_SECRET_BYTES))
                                if raw is None else parse_binding_secret(option, raw))
    if path:
        files.append(SecretFile("binding_secret", option, path))
    values["secret_files"] = tuple(files)
    return Config(**values)
