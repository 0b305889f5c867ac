"""Command line: ``python -m proxy --listen HOST:PORT --upstream HOST:PORT``.

Exit status: 0 after a SIGTERM/SIGINT shutdown, 2 for a configuration error, 1 when the
proxy cannot start (address in use, embedded PostgreSQL failed). Errors are one line on
stderr, never a traceback.
"""

from __future__ import annotations

import sys

from .app import run
from .config import Config, ConfigError, load_config
from .embedded import EmbeddedPostgresError
from .logfmt import configure_logging
from .server import ListenError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"pg-dialect-proxy: {exc}", file=sys.stderr)
        return 2
    _configure_logging(config)
    try:
        run(config, argv)
    except ConfigError as exc:  # found while starting, e.g. an unreadable certificate
        print(f"pg-dialect-proxy: {exc}", file=sys.stderr)
        return 2
    except (ListenError, EmbeddedPostgresError) as exc:
        print(f"pg-dialect-proxy: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _configure_logging(config: Config) -> None:
    """Records on stderr, one line each whatever the text logged (see :mod:`proxy.logfmt`)."""
    configure_logging(config.log_level, config.log_format, workers=config.workers > 1)


if __name__ == "__main__":
    sys.exit(main())
