"""Command line: ``python -m proxy --listen HOST:PORT --upstream HOST:PORT``.

Exit status: 0 after a SIGTERM/SIGINT shutdown, 2 for a configuration error, 1 when the
proxy cannot start (address in use, embedded PostgreSQL failed). Errors are one line on
stderr, never a traceback.
"""

from __future__ import annotations

import logging
import sys

from .app import run
from .config import Config, ConfigError, load_config
from .embedded import EmbeddedPostgresError
from .logfmt import OneLineFormatter
from .server import ListenError


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_config(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"pg-dialect-proxy: {exc}", file=sys.stderr)
        return 2
    _configure_logging(config)
    try:
        run(config)
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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        OneLineFormatter(
            "%(asctime)s %(levelname)s %(name)s"
            + ("[%(process)d]" if config.workers > 1 else "")
            + " %(message)s"
        )
    )
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler])


if __name__ == "__main__":
    sys.exit(main())
