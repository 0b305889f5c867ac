"""The container files against the real command line: the command lines of
docker-compose.yml and the Dockerfile parse with the proxy's own parser, the ports they
publish are the ones the proxy listens on, and the compose healthcheck, run as written
against a real proxy, passes (no container engine runs here)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import yaml

from proxy.config import load_config
from tests.conftest import REPO, PgServer
from tests.ops.conftest import metrics_address


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _dockerfile_instruction(name: str) -> str:
    text = (REPO / "Dockerfile").read_text()
    (line,) = [x for x in text.splitlines() if x.startswith(name + " ")]
    return line[len(name) + 1 :]


def test_compose_command_parses_and_its_ports_are_published() -> None:
    proxy = _compose()["services"]["proxy"]
    config = load_config(proxy["command"], {})
    assert config.listen.port == 6432 and config.listen.host == "0.0.0.0"
    assert config.upstream is not None and config.upstream.host == "postgres"
    assert config.metrics_listen is not None
    published = {int(mapping.split(":")[-1]) for mapping in proxy["ports"]}
    assert {config.listen.port, config.metrics_listen.port} <= published
    check = proxy["healthcheck"]["test"]
    assert check[0] == "CMD" and check[1] == "python"
    assert f":{config.metrics_listen.port}/healthz" in check[-1]
    # The drain must end before the container engine kills the proxy.
    grace = int(re.fullmatch(r"(\d+)s", proxy["stop_grace_period"]).group(1))  # type: ignore[union-attr]
    assert grace > config.shutdown_timeout


def test_dockerfile_command_line_parses() -> None:
    entrypoint = json.loads(_dockerfile_instruction("ENTRYPOINT"))
    cmd = json.loads(_dockerfile_instruction("CMD"))
    assert entrypoint == ["python", "-m", "proxy"]
    config = load_config(cmd, {})
    exposed = {int(port) for port in _dockerfile_instruction("EXPOSE").split()}
    assert config.metrics_listen is not None
    assert {config.listen.port, config.metrics_listen.port} <= exposed


def test_compose_healthcheck_runs_against_a_real_proxy(start_proxy, pg: PgServer) -> None:
    proxy = start_proxy("--metrics-listen", "127.0.0.1:0")
    address = metrics_address(proxy)
    code = _compose()["services"]["proxy"]["healthcheck"]["test"][-1]
    code = code.replace("127.0.0.1:9930", address)
    env = {"PATH": "/usr/bin:/bin", "NO_PROXY": "*"}
    healthy = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30)
    assert healthy.returncode == 0, healthy.stderr
    proxy.stop()
    stopped = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30)
    assert stopped.returncode != 0
