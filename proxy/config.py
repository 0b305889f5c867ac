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
    log_level: str = "info"
    workers: int = 1
    tls_cert: Path | None = None  # with tls_key: accept TLS from clients (SSLRequest → 'S')
    tls_key: Path | None = None
    upstream_sslmode: str = "prefer"  # libpq's sslmode towards the server (TCP only)
    upstream_sslrootcert: Path | None = None  # CA file for verify-ca / verify-full


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
    log_level = str(value("log_level") or "info").lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"log-level: unknown level {log_level!r}")
    sslmode = str(value("upstream_sslmode") or "prefer").lower()
    if sslmode not in UPSTREAM_SSLMODES:
        raise ConfigError(
            f"upstream-sslmode: {sslmode!r} is not one of {', '.join(UPSTREAM_SSLMODES)}"
        )
    rootcert = value("upstream_sslrootcert")
    tls_cert, tls_key = value("tls_cert"), value("tls_key")
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("tls-cert and tls-key: give both or neither")
    return Config(
        listen=listen,
        upstream=upstream,
        data_dir=data_dir,
        log_level=log_level,
        tls_cert=Path(str(tls_cert)) if tls_cert else None,
        tls_key=Path(str(tls_key)) if tls_key else None,
        upstream_sslmode=sslmode,
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
    return {key.replace("-", "_"): value for key, value in data.items()}
