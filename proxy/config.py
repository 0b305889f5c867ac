"""The proxy's configuration: one frozen dataclass, from flags, environment and TOML.

Precedence, highest first: command-line flag, environment variable ``PGDP_<NAME>``, key
``<name>`` in the TOML file given by ``--config`` / ``PGDP_CONFIG``, built-in default.
Every problem is reported as :class:`ConfigError` with a one-line message for the user.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NoReturn

import platformdirs

from .clean_program import DEFAULT_CHECK_SECONDS, DEFAULT_WAIT_SECONDS

ENV_PREFIX = "PGDP_"
UPSTREAM_SSLMODES = ("disable", "prefer", "require", "verify-ca", "verify-full")
CLEAN_WITHOUT_FORCE = ("idle", "none")
DEFAULT_LISTEN = "127.0.0.1:6432"
LOG_LEVELS = ("debug", "info", "warning", "error")
PG_MAX_MESSAGE = 0x3FFFFFFF  # PostgreSQL's MaxAllocSize - 1: the largest message it accepts


class ConfigError(ValueError):
    """A configuration value is missing, malformed or unusable."""


@dataclass(frozen=True, slots=True)
class Address:
    """Where to listen or connect: a TCP ``host:port`` or a Unix-domain socket path."""

    host: str | None = None
    port: int = 5432
    unix_path: str | None = None

    def __str__(self) -> str:
        if self.unix_path:
            return self.unix_path
        return (
            f"[{self.host}]:{self.port}" if ":" in (self.host or "") else f"{self.host}:{self.port}"
        )


def parse_address(text: str, *, what: str, default_port: int = 5432) -> Address:
    """``HOST:PORT``, ``[v6]:PORT``, ``/socket/dir`` (port 5432), ``/dir:PORT`` or a socket file."""
    text = text.strip()
    if not text:
        raise ConfigError(f"{what}: empty address")
    if text.startswith("/"):
        path, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
        port = _parse_port(port_text, what) if port_text else default_port
        p = Path(path)
        if p.is_dir() or not p.name.startswith(".s.PGSQL."):
            return Address(port=port, unix_path=str(p / f".s.PGSQL.{port}"))
        return Address(port=port, unix_path=str(p))
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"{what}: cannot parse address {text!r}, expected [HOST]:PORT")
        port_text = rest[1:]
    else:
        if text.count(":") > 1:
            raise ConfigError(f"{what}: IPv6 address {text!r} needs brackets, expected [HOST]:PORT")
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, ""
    if not host:
        raise ConfigError(f"{what}: missing host in {text!r}, expected HOST:PORT")
    port = _parse_port(port_text, what) if port_text else default_port
    return Address(host=host, port=port)


def _parse_port(text: str, what: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(f"{what}: invalid port {text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what}: port {port} out of range 0-65535")
    return port


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the proxy needs to run. Built by :func:`load_config`."""

    listen: Address
    upstream: Address | None  # None: start the embedded PostgreSQL
    data_dir: Path
    max_message_size: int = PG_MAX_MESSAGE
    connect_timeout: float = 10.0
    shutdown_timeout: float = 30.0
    client_login_timeout: float = 60.0  # startup, TLS and authentication must end within it
    max_client_conn: int = 10000  # per process; clients beyond it get 53300
    clean_wait_timeout: float = DEFAULT_WAIT_SECONDS
    clean_check_timeout: float = DEFAULT_CHECK_SECONDS
    clean_without_force: str = "idle"  # without FORCE: terminate idle sessions, or none
    log_level: str = "info"
    workers: int = 1
    tls_cert: Path | None = None  # with tls_key: accept TLS from clients (SSLRequest → 'S')
    tls_key: Path | None = None
    upstream_sslmode: str = "prefer"  # libpq's sslmode towards the server (TCP only)
    upstream_sslrootcert: Path | None = None  # CA file for verify-ca / verify-full
    log_format: str = "text"  # "text" (key=value lines) or "json" (one object per line)
    audit_log: Path | None = None  # CLEAN CONNECTION audit records also go here (JSON lines)
    metrics_listen: Address | None = None  # where /metrics and /healthz are served
    metrics_label_limit: int = 100  # distinct database/user label values before "other"
    application_name_add_host: bool = False  # append " - host:port" to application_name
    tcp_keepalive: bool = True  # SO_KEEPALIVE on both legs of every session
    tcp_keepalive_idle: int | None = None  # seconds; None: the OS's (TCP_KEEPIDLE)
    tcp_keepalive_interval: int | None = None  # seconds; None: the OS's (TCP_KEEPINTVL)
    tcp_keepalive_count: int | None = None  # probes; None: the OS's (TCP_KEEPCNT)
    reuse_port: bool = True  # SO_REUSEPORT: a second proxy may share the port (online restart)

    def needs_restart(self, other: Config) -> list[str]:
        """The settings that differ from ``other`` but take effect only on a restart."""
        return [
            name.replace("_", "-")
            for name in RESTART_SETTINGS
            if getattr(self, name) != getattr(other, name)
        ]


RESTART_SETTINGS = (
    "listen",
    "upstream",
    "data_dir",
    "workers",
    "upstream_sslmode",
    "upstream_sslrootcert",
    "metrics_listen",
    "reuse_port",
)
"""Settings a SIGHUP reload reports and keeps: changing them needs a restart."""

_BOOLEANS = {"on": True, "true": True, "yes": True, "1": True}
_BOOLEANS.update({"off": False, "false": False, "no": False, "0": False})


def parse_bool(text: object, what: str) -> bool:
    """``on/off``, ``true/false``, ``yes/no``, ``1/0`` (TOML booleans too)."""
    if isinstance(text, bool):
        return text
    found = _BOOLEANS.get(str(text).strip().lower())
    if found is None:
        raise ConfigError(f"{what}: expected on or off, got {text!r}")
    return found


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("pg-dialect-proxy"))


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line is a one-line :class:`ConfigError`, not usage text
    and ``SystemExit`` (``--help`` still prints and exits 0)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="pg-dialect-proxy",
        description=(
            "PostgreSQL wire-protocol proxy that passes all traffic through unchanged and "
            "runs openGauss's CLEAN CONNECTION statement on stock PostgreSQL. Every option "
            f"can also be set as an environment variable {ENV_PREFIX}<OPTION> (e.g. "
            f"{ENV_PREFIX}UPSTREAM) or as a key in the TOML file given by --config."
        ),
    )
    add = parser.add_argument
    add("--config", metavar="FILE", help="TOML file with option keys (e.g. upstream = '...')")
    add("--listen", metavar="HOST:PORT", help=f"address to accept clients on [{DEFAULT_LISTEN}]")
    add(
        "--upstream",
        metavar="HOST:PORT|DIR",
        help="PostgreSQL server, or its Unix-socket directory; omitted: embedded PostgreSQL",
    )
    add("--data-dir", metavar="DIR", help="where the embedded PostgreSQL keeps its data")
    add(
        "--max-message-size",
        type=int,
        metavar="BYTES",
        help=f"largest client message accepted [{PG_MAX_MESSAGE}]",
    )
    add("--connect-timeout", type=float, metavar="SECONDS", help="upstream connect timeout [10]")
    add(
        "--shutdown-timeout",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM, how long sessions may finish before they are closed [30]",
    )
    add(
        "--client-login-timeout",
        type=float,
        metavar="SECONDS",
        help="time a client has to connect and authenticate before it is disconnected [60]",
    )
    add(
        "--max-client-conn",
        type=int,
        metavar="N",
        help="most client connections open at once (per worker); more are refused [10000]",
    )
    add(
        "--clean-wait-timeout",
        type=float,
        metavar="SECONDS",
        help="how long CLEAN CONNECTION waits for the sessions it terminated to exit "
        f"[{DEFAULT_WAIT_SECONDS:g}]",
    )
    add(
        "--clean-check-timeout",
        type=float,
        metavar="SECONDS",
        help="how long CLEAN CONNECTION ... CHECK waits for other sessions to leave "
        f"[{DEFAULT_CHECK_SECONDS:g}]",
    )
    add(
        "--clean-without-force",
        choices=CLEAN_WITHOUT_FORCE,
        help="what CLEAN CONNECTION without FORCE terminates: idle sessions, or none "
        "(openGauss single node: it only validates and checks) [idle]",
    )
    add(
        "--workers",
        type=int,
        metavar="N",
        help="processes accepting on the listen port (SO_REUSEPORT) [1]",
    )
    add("--tls-cert", metavar="FILE", help="PEM certificate (chain) to accept TLS from clients")
    add("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    add(
        "--upstream-sslmode",
        choices=UPSTREAM_SSLMODES,
        help="TLS towards the server, as libpq's sslmode [prefer]",
    )
    add(
        "--upstream-sslrootcert",
        metavar="FILE",
        help="CA certificates for verify-ca/verify-full [the system's]",
    )
    add(
        "--log-level",
        choices=LOG_LEVELS,
        help="log verbosity [info]",
    )
    add(
        "--log-format",
        choices=["text", "json"],
        help="log records as key=value text or as one JSON object per line [text]",
    )
    add(
        "--audit-log",
        metavar="FILE",
        help="also append CLEAN CONNECTION audit records to FILE (JSON lines; reopened on SIGHUP)",
    )
    add(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics and /healthz on HOST:PORT [off]",
    )
    add(
        "--metrics-label-limit",
        type=int,
        metavar="N",
        help="distinct databases/users labelled in metrics before the rest count as 'other' [100]",
    )
    flag = {"nargs": "?", "const": "on", "metavar": "on|off"}
    add(
        "--application-name-add-host",
        **flag,
        help="append the client's address and port to application_name [off]",
    )
    add("--tcp-keepalive", **flag, help="TCP keepalive on client and server sockets [on]")
    add(
        "--tcp-keepalive-idle",
        type=int,
        metavar="SECONDS",
        help="idle time before the first keepalive probe [the OS's]",
    )
    add(
        "--tcp-keepalive-interval",
        type=int,
        metavar="SECONDS",
        help="time between keepalive probes [the OS's]",
    )
    add(
        "--tcp-keepalive-count",
        type=int,
        metavar="N",
        help="unanswered probes before the connection is dropped [the OS's]",
    )
    add(
        "--reuse-port",
        **flag,
        help="SO_REUSEPORT: a second proxy may listen on the same port (online restart) [on]",
    )
    parser.set_defaults(
        **{action.dest: None for action in parser._actions if action.dest != "help"}
    )
    return parser


def load_config(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Parse ``argv`` (without the program name) against ``environ`` and the TOML file."""
    environ = dict(os.environ if environ is None else environ)
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config") or environ.get(ENV_PREFIX + "CONFIG")
    file_values = _read_toml(config_file) if config_file else {}

    known = {f.name for f in fields(Config)}
    unknown = set(file_values) - known
    if unknown:
        raise ConfigError(f"{config_file}: unknown key(s): {', '.join(sorted(unknown))}")

    def value(name: str) -> object:
        if args.get(name) is not None:
            return args[name]
        env = environ.get(ENV_PREFIX + name.upper())
        if env is not None and env != "":
            return env
        return file_values.get(name)

    listen = parse_address(
        str(value("listen") or DEFAULT_LISTEN), what="--listen", default_port=6432
    )
    upstream_text = value("upstream")
    upstream = parse_address(str(upstream_text), what="--upstream") if upstream_text else None
    data_dir = Path(str(value("data_dir"))) if value("data_dir") else default_data_dir()
    options: dict[str, object] = {}
    for name, kind in (
        ("max_message_size", int),
        ("workers", int),
        ("max_client_conn", int),
        ("connect_timeout", float),
        ("shutdown_timeout", float),
        ("client_login_timeout", float),
        ("clean_wait_timeout", float),
        ("clean_check_timeout", float),
        ("metrics_label_limit", int),
        ("tcp_keepalive_idle", int),
        ("tcp_keepalive_interval", int),
        ("tcp_keepalive_count", int),
    ):
        raw = value(name)
        if raw is None:
            continue
        try:
            number = kind(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{name.replace('_', '-')}: not a number: {raw!r}") from None
        if not number > 0:  # also refuses NaN
            raise ConfigError(f"{name.replace('_', '-')}: must be positive, got {raw!r}")
        options[name] = number
    if options.get("max_message_size", 5) < 5:  # type: ignore[operator]
        raise ConfigError("max-message-size: must be at least 5 bytes")
    # A message's length is a 32-bit field; the streams (compiled: C Py_ssize_t) and the
    # socket options (C int) take nothing larger.
    for name, most in (
        ("max_message_size", 0xFFFFFFFF),
        ("tcp_keepalive_idle", 0x7FFFFFFF),
        ("tcp_keepalive_interval", 0x7FFFFFFF),
        ("tcp_keepalive_count", 0x7FFFFFFF),
    ):
        if options.get(name, 0) > most:  # type: ignore[operator]
            raise ConfigError(f"{name.replace('_', '-')}: must be at most {most}")
    log_level = str(value("log_level") or "info").lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"log-level: unknown level {log_level!r}")
    sslmode = str(value("upstream_sslmode") or "prefer").lower()
    if sslmode not in UPSTREAM_SSLMODES:
        raise ConfigError(
            f"upstream-sslmode: {sslmode!r} is not one of {', '.join(UPSTREAM_SSLMODES)}"
        )
    without_force = str(value("clean_without_force") or "idle").lower()
    if without_force not in CLEAN_WITHOUT_FORCE:
        raise ConfigError(
            f"clean-without-force: {without_force!r} is not one of {', '.join(CLEAN_WITHOUT_FORCE)}"
        )
    rootcert = value("upstream_sslrootcert")
    tls_cert, tls_key = value("tls_cert"), value("tls_key")
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("tls-cert and tls-key: give both or neither")
    log_format = str(value("log_format") or "text").lower()
    if log_format not in {"text", "json"}:
        raise ConfigError(f"log-format: expected text or json, got {log_format!r}")
    for name in ("application_name_add_host", "tcp_keepalive", "reuse_port"):
        raw = value(name)
        if raw is not None and raw != "":
            options[name] = parse_bool(raw, name.replace("_", "-"))
    metrics_text = value("metrics_listen")
    metrics_listen = None
    if metrics_text:
        metrics_listen = parse_address(
            str(metrics_text), what="--metrics-listen", default_port=9930
        )
        if metrics_listen.unix_path:
            raise ConfigError("--metrics-listen: expected HOST:PORT")
    audit_log = value("audit_log")
    return Config(
        listen=listen,
        log_format=log_format,
        audit_log=Path(str(audit_log)) if audit_log else None,
        metrics_listen=metrics_listen,
        upstream=upstream,
        data_dir=data_dir,
        log_level=log_level,
        tls_cert=Path(str(tls_cert)) if tls_cert else None,
        tls_key=Path(str(tls_key)) if tls_key else None,
        upstream_sslmode=sslmode,
        clean_without_force=without_force,
        upstream_sslrootcert=Path(str(rootcert)) if rootcert else None,
        **options,  # type: ignore[arg-type]
    )


def _read_toml(path: str) -> dict[str, object]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid TOML: not UTF-8 at byte {exc.start}"
        ) from None
    return {key.replace("-", "_"): value for key, value in data.items()}
