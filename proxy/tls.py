"""TLS towards clients: the server-side SSL context built from ``--tls-cert/--tls-key``."""

from __future__ import annotations

import ssl

from .config import Config, ConfigError


def client_tls_context(config: Config) -> ssl.SSLContext | None:
    """The context used to accept TLS from clients, or None when TLS is not configured.

    TLS 1.2 or newer, as PostgreSQL's default ``ssl_min_protocol_version``. Raises
    :class:`ConfigError` (one line) when the files cannot be read or do not match.
    """
    if config.tls_cert is None or config.tls_key is None:
        return None
    for path in (config.tls_cert, config.tls_key):
        try:
            path.open("rb").close()
        except OSError as exc:
            raise ConfigError(f"tls: cannot read {path}: {exc.strerror}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tls: cannot load certificate/key: {exc}") from None
    return context
