"""The supervisor's private settings directory (``pgdp-settings-*`` under the temporary
directory) for reloads with ``--workers``: how long does it live?

* Removed when the supervisor ends normally (SIGTERM, during a storm of SIGHUPs too).
* A supervisor killed outright (OOM killer, SIGKILL) runs no cleanup; its workers see end
  of file on their pipes and stop. Nothing is left to remove the directory and the
  pickled settings in it: every such crash leaves one behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

from tests.conftest import PgServer, wait_until


def _toml(path: Path, **values: object) -> None:
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _settings_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("pgdp-settings-*"))


def _start(start_proxy, tmp_path: Path, *args: str):  # type: ignore[no-untyped-def]
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proxy = start_proxy(*args, env={"TMPDIR": str(tmp)})
    supervisor = proxy.process.pid
    wait_until(lambda: len(_children(supervisor)) == 2, 10, "two workers")
    wait_until(lambda: proxy.log().count("listening on") == 2, 10, "both workers listening")
    return proxy, tmp


def test_settings_directory_is_private_and_removed_on_sigterm_during_reloads(
    start_proxy, pg: PgServer, tmp_path: Path
) -> None:
    config = tmp_path / "proxy.toml"
    _toml(config, workers=2, log_level="info")
    proxy, tmp = _start(start_proxy, tmp_path, "--config", str(config))
    (directory,) = _settings_dirs(tmp)
    assert directory.stat().st_mode & 0o777 == 0o700
    workers = set(_children(proxy.process.pid))
    try:
        for attempt in range(30):
            _toml(config, workers=2, log_level="info", connect_timeout=2 + attempt)
            proxy.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration sent to" in proxy.log(), 10, "a reload sent")
        proxy.process.send_signal(signal.SIGHUP)
        proxy.process.send_signal(signal.SIGTERM)
        assert proxy.process.wait(15) == 0, proxy.log()
        wait_until(lambda: not any(_alive(pid) for pid in workers), 10, "the workers to exit")
        assert _settings_dirs(tmp) == []
    finally:
        _kill_all(workers)


def test_settings_directory_is_not_left_behind_by_a_killed_supervisor(
    start_proxy, pg: PgServer, tmp_path: Path
) -> None:
    config = tmp_path / "proxy.toml"
    _toml(config, workers=2, log_level="info")
    proxy, tmp = _start(start_proxy, tmp_path, "--config", str(config))
    _toml(config, workers=2, log_level="info", connect_timeout=7)
    proxy.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "configuration sent to" in proxy.log(), 10, "a reload sent")
    assert len(_settings_dirs(tmp)) == 1
    workers = set(_children(proxy.process.pid))
    try:
        os.kill(proxy.process.pid, signal.SIGKILL)
        proxy.process.wait(10)
        wait_until(lambda: not any(_alive(pid) for pid in workers), 10, "the workers to exit")
        # The workers outlived the supervisor and were the last to know of the directory.
        assert _settings_dirs(tmp) == [], [list(d.iterdir()) for d in _settings_dirs(tmp)]
    finally:
        _kill_all(workers)
