"""The command line as users meet it: ``python -m proxy`` as a subprocess.

Errors are one line on stderr with a non-zero exit and no traceback; flags, PGDP_*
variables and the TOML file all configure it; SIGTERM drains, SIGINT closes at once.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import (
    PgServer,
    ProxyLauncher,
    ProxyProcess,
    assert_one_line_failure,
    run_cli,
    wait_until,
)


def test_help() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "--listen" in result.stdout and "--upstream" in result.stdout
    assert "PGDP_" in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--listen", "127.0.0.1:notaport"], "--listen"),
        (["--upstream", "host:99999"], "--upstream"),
        (["--upstream", "::1"], "brackets"),
        (["--max-message-size", "many"], "max-message-size"),
        (["--no-such-option"], "--no-such-option"),
    ],
)
def test_bad_arguments(args: list[str], needle: str) -> None:
    assert_one_line_failure(run_cli(*args), needle)


def test_bad_environment() -> None:
    result = run_cli(env={"PGDP_UPSTREAM": "[::1", "PGDP_LISTEN": "127.0.0.1:0"})
    assert_one_line_failure(result, "--upstream")


def test_unreadable_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert_one_line_failure(run_cli("--config", str(missing)), str(missing))
    assert_one_line_failure(run_cli("--config", str(tmp_path)), str(tmp_path))


def test_invalid_toml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("upstream = 127.0.0.1:5432\n")  # unquoted string
    assert_one_line_failure(run_cli("--config", str(bad)), "not valid TOML")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('upstreams = "127.0.0.1:5432"\n')
    assert_one_line_failure(run_cli("--config", str(unknown)), "upstreams")


def test_port_already_in_use(pg: PgServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--listen", f"127.0.0.1:{port}", "--upstream", f"{pg.host}:{pg.port}")
    assert_one_line_failure(result, f"127.0.0.1:{port}")
    assert result.returncode == 1


# --- configuration sources that must take effect -------------------------------------


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """``launch(*args, env=...)``: a proxy started with exactly these arguments."""
    launcher = ProxyLauncher(tmp_path, "cli")
    yield lambda *args, env=None: launcher.start(list(args), env)
    launcher.stop_all()


def server_port_seen_through(proxy: ProxyProcess, pg: PgServer) -> int:
    with psycopg.connect(proxy.dsn(user=pg.user), autocommit=True) as conn:
        return int(conn.execute("select current_setting('port')").fetchone()[0])


def test_environment_configures_upstream(pg: PgServer, launch: Callable[..., ProxyProcess]) -> None:
    proxy = launch(
        env={"PGDP_UPSTREAM": f"{pg.host}:{pg.port}", "PGDP_LISTEN": "127.0.0.1:0"},
    )
    assert server_port_seen_through(proxy, pg) == pg.port


def test_toml_configures_upstream(
    pg: PgServer, tmp_path: Path, launch: Callable[..., ProxyProcess]
) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text(
        f'upstream = "{pg.host}:{pg.port}"\nlisten = "127.0.0.1:0"\nmax-message-size = 65536\n'
    )
    proxy = launch("--config", str(config))
    assert server_port_seen_through(proxy, pg) == pg.port
    # The TOML's max-message-size took effect: a 100 kB query is refused.
    with (
        psycopg.connect(proxy.dsn(user=pg.user), autocommit=True) as conn,
        pytest.raises(psycopg.OperationalError),
    ):
        conn.execute("select '" + "x" * 100_000 + "'")


def test_flag_overrides_environment(pg: PgServer, launch: Callable[..., ProxyProcess]) -> None:
    proxy = launch(
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        f"{pg.host}:{pg.port}",
        env={"PGDP_UPSTREAM": "127.0.0.1:1"},
    )
    assert server_port_seen_through(proxy, pg) == pg.port


# --- signals -------------------------------------------------------------------------


def refuses_connections(proxy: ProxyProcess) -> bool:
    try:
        socket.create_connection((proxy.host, proxy.port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_drains_idle_session(start_proxy: Callable[..., ProxyProcess]) -> None:
    proxy = start_proxy("--shutdown-timeout", "30")
    with proxy.connect(application_name="drain") as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        proxy.process.send_signal(signal.SIGTERM)
        wait_until(lambda: refuses_connections(proxy), 10, "the listener to close")
        # The open session may still finish its work.
        assert proxy.process.poll() is None
        assert conn.execute("select 'still served'").fetchone() == ("still served",)
        assert proxy.process.poll() is None
    # The session closed: the proxy exits, successfully.
    assert proxy.process.wait(10) == 0
    assert "Traceback" not in proxy.log()


def test_sigterm_closes_sessions_after_shutdown_timeout(
    start_proxy: Callable[..., ProxyProcess],
) -> None:
    proxy = start_proxy("--shutdown-timeout", "1")
    with proxy.connect() as conn:
        conn.execute("select 1")
        proxy.process.send_signal(signal.SIGTERM)
        assert proxy.process.wait(10) == 0
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    assert "closing 1 sessions still open" in proxy.log()


def test_sigint_closes_at_once(start_proxy: Callable[..., ProxyProcess]) -> None:
    proxy = start_proxy("--shutdown-timeout", "30")
    with proxy.connect() as conn:
        conn.execute("select 1")
        proxy.process.send_signal(signal.SIGINT)
        assert proxy.process.wait(5) == 0
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
