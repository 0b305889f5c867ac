"""TLS contexts: towards clients (``--tls-cert/--tls-key``) and towards the server
(``--upstream-sslmode``, ``--upstream-sslrootcert``)."""

from __future__ import annotations

import ssl

from .config import Config, ConfigError
from .upstream import UpstreamTLS


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


def upstream_tls(config: Config) -> UpstreamTLS | None:
    """How to negotiate TLS with the server, or None for ``disable``.

    As libpq: ``prefer`` and ``require`` encrypt without verifying the certificate,
    ``verify-ca`` checks it against the root certificates, ``verify-full`` also the host name.
    """
    mode = config.upstream_sslmode
    if mode == "disable":
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if mode in ("prefer", "require"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return UpstreamTLS(mode, context)
    context.check_hostname = mode == "verify-full"
    context.verify_mode = ssl.CERT_REQUIRED
    root = config.upstream_sslrootcert
    try:
        if root is not None:
            context.load_verify_locations(cafile=root)
        else:
            context.load_default_certs()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"upstream-sslrootcert: cannot load {root}: {exc}") from None
    return UpstreamTLS(mode, context)
