"""Configuration: precedence flags > PGDP_* environment > TOML file > defaults, address
forms, and errors as one-line :class:`ConfigError` messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import (
    DEFAULT_LISTEN,
    PG_MAX_MESSAGE,
    Address,
    ConfigError,
    default_data_dir,
    load_config,
    parse_address,
)


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "proxy.toml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    config = load_config([], {})
    assert config.listen == parse_address(DEFAULT_LISTEN, what="listen", default_port=6432)
    assert config.listen == Address(host="127.0.0.1", port=6432)
    assert config.upstream is None  # embedded PostgreSQL
    assert config.data_dir == default_data_dir()
    assert config.max_message_size == PG_MAX_MESSAGE
    assert config.connect_timeout == 10.0
    assert config.shutdown_timeout == 30.0
    assert config.client_login_timeout == 60.0
    assert config.max_client_conn == 10000
    assert config.log_level == "info"
    assert config.clean_without_force == "idle"


def test_precedence_flag_env_toml_default(tmp_path: Path) -> None:
    toml = write_toml(
        tmp_path,
        'upstream = "toml-host:1111"\n'
        'listen = "127.0.0.1:2222"\n'
        "shutdown-timeout = 3\n"
        "connect_timeout = 4.5\n"
        'log_level = "warning"\n',
    )
    env = {
        "PGDP_CONFIG": toml,
        "PGDP_LISTEN": "127.0.0.2:3333",
        "PGDP_SHUTDOWN_TIMEOUT": "7",
    }
    config = load_config(["--shutdown-timeout", "9"], env)
    assert config.upstream == Address(host="toml-host", port=1111)  # TOML over default
    assert config.listen == Address(host="127.0.0.2", port=3333)  # env over TOML
    assert config.shutdown_timeout == 9.0  # flag over env over TOML
    assert config.connect_timeout == 4.5  # TOML, dashes or underscores alike
    assert config.log_level == "warning"
    assert config.max_message_size == PG_MAX_MESSAGE  # default

    config = load_config(["--upstream", "flag-host:5555", "--config", toml], {})
    assert config.upstream == Address(host="flag-host", port=5555)
    assert config.shutdown_timeout == 3.0


def test_config_flag_beats_config_env(tmp_path: Path) -> None:
    first = write_toml(tmp_path, 'upstream = "first:1"\n')
    second = tmp_path / "second.toml"
    second.write_text('upstream = "second:2"\n')
    config = load_config(["--config", str(second)], {"PGDP_CONFIG": first})
    assert config.upstream == Address(host="second", port=2)


def test_empty_env_value_is_unset(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, 'upstream = "toml-host:1"\n')
    config = load_config(["--config", toml], {"PGDP_UPSTREAM": ""})
    assert config.upstream == Address(host="toml-host", port=1)


def test_client_limits_from_each_source(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, "client-login-timeout = 5\nmax_client_conn = 300\n")
    config = load_config(["--config", toml], {})
    assert (config.client_login_timeout, config.max_client_conn) == (5.0, 300)
    env = {"PGDP_CLIENT_LOGIN_TIMEOUT": "2.5", "PGDP_MAX_CLIENT_CONN": "40"}
    config = load_config(["--config", toml], env)
    assert (config.client_login_timeout, config.max_client_conn) == (2.5, 40)
    config = load_config(
        ["--config", toml, "--client-login-timeout", "1", "--max-client-conn", "3"], env
    )
    assert (config.client_login_timeout, config.max_client_conn) == (1.0, 3)


def test_clean_without_force_from_each_source(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, 'clean-without-force = "none"\n')
    assert load_config(["--config", toml], {}).clean_without_force == "none"
    env = {"PGDP_CLEAN_WITHOUT_FORCE": "IDLE"}
    assert load_config(["--config", toml], env).clean_without_force == "idle"
    argv = ["--config", toml, "--clean-without-force", "none"]
    assert load_config(argv, env).clean_without_force == "none"


def test_env_numbers_and_data_dir(tmp_path: Path) -> None:
    config = load_config(
        [],
        {
            "PGDP_MAX_MESSAGE_SIZE": "65536",
            "PGDP_CONNECT_TIMEOUT": "0.5",
            "PGDP_DATA_DIR": str(tmp_path),
            "PGDP_LOG_LEVEL": "DEBUG",
        },
    )
    assert config.max_message_size == 65536
    assert config.connect_timeout == 0.5
    assert config.data_dir == tmp_path
    assert config.log_level == "debug"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("db.example.com:5433", Address(host="db.example.com", port=5433)),
        ("127.0.0.1:0", Address(host="127.0.0.1", port=0)),
        ("localhost", Address(host="localhost", port=5432)),
        ("[::1]:5432", Address(host="::1", port=5432)),
        ("[::1]", Address(host="::1", port=5432)),
        ("[fe80::1%eth0]:6000", Address(host="fe80::1%eth0", port=6000)),
        ("  10.0.0.1:1  ", Address(host="10.0.0.1", port=1)),
    ],
)
def test_tcp_address_forms(text: str, expected: Address) -> None:
    assert parse_address(text, what="--upstream") == expected


def test_unix_socket_forms(tmp_path: Path) -> None:
    directory = str(tmp_path)
    assert parse_address(directory, what="--upstream") == Address(
        port=5432, unix_path=f"{directory}/.s.PGSQL.5432"
    )
    assert parse_address(f"{directory}:5433", what="--upstream") == Address(
        port=5433, unix_path=f"{directory}/.s.PGSQL.5433"
    )
    socket_file = f"{directory}/.s.PGSQL.7777"
    assert parse_address(socket_file, what="--upstream") == Address(
        port=5432, unix_path=socket_file
    )
    # A directory that does not exist (yet) is still a directory.
    assert parse_address("/run/nowhere", what="--upstream").unix_path == (
        "/run/nowhere/.s.PGSQL.5432"
    )


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (Address(host="h", port=1), "h:1"),
        (Address(host="::1", port=5432), "[::1]:5432"),
        (Address(port=5432, unix_path="/tmp/.s.PGSQL.5432"), "/tmp/.s.PGSQL.5432"),
    ],
)
def test_address_str(address: Address, text: str) -> None:
    assert str(address) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        ":5432",
        "host:port",
        "host:70000",
        "host:-1",
        "[::1",
        "[::1]5432",
        "[]:5432",
        "::1",
        "fe80::1:5432",
        "/tmp:notaport",
    ],
)
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_address(text, what="--upstream")
    assert "\n" not in str(info.value)
    assert "--upstream" in str(info.value)


def one_line_error(argv: list[str], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(argv, env or {})
    message = str(info.value)
    assert message and "\n" not in message, message
    return message


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--listen", "nope:nope"], {}, "--listen"),
        (["--upstream", "a:b"], {}, "--upstream"),
        ([], {"PGDP_UPSTREAM": "host:99999"}, "out of range"),
        ([], {"PGDP_MAX_MESSAGE_SIZE": "big"}, "max-message-size"),
        ([], {"PGDP_CONNECT_TIMEOUT": "-1"}, "connect-timeout"),
        (["--shutdown-timeout", "0"], {}, "shutdown-timeout"),
        (["--max-message-size", "4"], {}, "max-message-size"),
        # beyond the 32-bit length field (the compiled streams' C integers overflowed)
        (["--max-message-size", str(1 << 63)], {}, "max-message-size"),
        (["--max-message-size", str(1 << 32)], {}, "max-message-size"),
        # beyond a C int: setsockopt raised TypeError on every accepted connection
        (["--tcp-keepalive-idle", str(1 << 31)], {}, "tcp-keepalive-idle"),
        ([], {"PGDP_TCP_KEEPALIVE_COUNT": str(1 << 40)}, "tcp-keepalive-count"),
        (["--client-login-timeout", "0"], {}, "client-login-timeout"),
        ([], {"PGDP_CLIENT_LOGIN_TIMEOUT": "nan"}, "client-login-timeout"),
        ([], {"PGDP_CLIENT_LOGIN_TIMEOUT": "soon"}, "client-login-timeout"),
        (["--max-client-conn", "0"], {}, "max-client-conn"),
        (["--max-client-conn", "2.5"], {}, "max-client-conn"),
        ([], {"PGDP_MAX_CLIENT_CONN": "-1"}, "max-client-conn"),
        ([], {"PGDP_LOG_LEVEL": "loud"}, "log-level"),
        ([], {"PGDP_CLEAN_WITHOUT_FORCE": "busy"}, "clean-without-force"),
        (["--clean-without-force", "all"], {}, "clean-without-force"),
        # argparse's own complaints are one line too, not usage text and SystemExit
        (["--max-message-size", "lots"], {}, "max-message-size"),
        (["--log-level", "loud"], {}, "log-level"),
        (["--no-such-flag"], {}, "--no-such-flag"),
        (["--upstream"], {}, "--upstream"),
    ],
)
def test_errors_are_one_line(argv: list[str], env: dict[str, str], needle: str) -> None:
    assert needle in one_line_error(argv, env)


def test_toml_errors(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")
    assert missing in one_line_error(["--config", missing])
    assert missing in one_line_error([], {"PGDP_CONFIG": missing})
    assert "TOML" in one_line_error(["--config", write_toml(tmp_path, "upstream = = 1\n[")])
    assert "bogus" in one_line_error(["--config", write_toml(tmp_path, "bogus = 1\n")])
    assert "max-message-size" in one_line_error(
        ["--config", write_toml(tmp_path, 'max_message_size = "x"\n')]
    )
    directory = str(tmp_path)
    assert directory in one_line_error(["--config", directory])


def test_config_is_frozen() -> None:
    config = load_config([], {})
    with pytest.raises(AttributeError):
        config.listen = Address(host="x")  # type: ignore[misc]
