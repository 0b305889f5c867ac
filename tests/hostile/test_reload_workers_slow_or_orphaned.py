"""Reload with ``--workers``: the supervisor sends what it accepted down one pipe per
worker, non-blocking. What of a worker that does not read for a while (stopped, or its
loop busy), and of workers whose supervisor is gone?

* Reloads that pile up while a worker is stopped fill its pipe; the supervisor then
  skips that worker ("not sent this time"). Once the worker reads again it must end up
  with the last settings the supervisor accepted, as every other worker does, not with
  the last that happened to fit in its pipe.
* A supervisor killed outright (OOM killer, SIGKILL) closes the pipes; each worker sees
  end of file. Its SIGHUP is ignored now (the supervisor's alone), so an orphan can
  neither be reloaded nor is it supervised: it must not go on serving for ever.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
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


def _reloads(log: str, pid: int) -> list[str]:
    found = []
    for line in log.splitlines():
        if "configuration reloaded" not in line:
            continue
        match = re.search(r'\[(\d+)\]|"pid": (\d+)', line)
        if match and int(match.group(1) or match.group(2)) == pid:
            found.append(line)
    return found


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


def test_a_stopped_worker_ends_with_the_last_accepted_settings(
    start_proxy, pg: PgServer, tmp_path: Path
) -> None:
    config = tmp_path / "proxy.toml"
    _toml(config, workers=2, log_level="info")
    proxy = start_proxy("--config", str(config))
    supervisor = proxy.process.pid
    wait_until(lambda: len(_children(supervisor)) == 2, 10, "two workers")
    wait_until(lambda: proxy.log().count("listening on") == 2, 10, "both workers listening")
    slow = min(_children(supervisor))
    os.kill(slow, signal.SIGSTOP)
    try:
        # Reloads pile up while it cannot read (a busy or stopped worker).
        for attempt in range(1, 60):
            _toml(config, workers=2, log_level="info", connect_timeout=1 + attempt)
            proxy.process.send_signal(signal.SIGHUP)
            wait_until(
                lambda n=attempt: proxy.log().count("configuration sent to") >= n,
                10,
                "the reload sent",
            )
        # The operator's final version.
        _toml(config, workers=2, log_level="info", log_format="json")
        sent = proxy.log().count("configuration sent to")
        proxy.process.send_signal(signal.SIGHUP)
        wait_until(lambda: proxy.log().count("configuration sent to") > sent, 10, "sent")
    finally:
        os.kill(slow, signal.SIGCONT)
    (last, *_) = wait_until(
        lambda: _reloads(proxy.log(), slow)[-1:], 10, "the stopped worker's reload"
    )
    assert "log-format json" in last, last
    # It applied the latest once, not the backlog one by one.
    assert len(_reloads(proxy.log(), slow)) == 1, _reloads(proxy.log(), slow)


def test_workers_do_not_outlive_their_supervisor(start_proxy, pg: PgServer, tmp_path: Path) -> None:
    proxy = start_proxy("--workers", "2")
    supervisor = proxy.process.pid
    wait_until(lambda: len(_children(supervisor)) == 2, 10, "two workers")
    wait_until(lambda: proxy.log().count("listening on") == 2, 10, "both workers listening")
    workers = set(_children(supervisor))
    try:
        os.kill(supervisor, signal.SIGKILL)
        proxy.process.wait(10)
        # Each worker's pipe is at end of file now: nothing supervises it, no reload can
        # reach it (it ignores SIGHUP). It must stop (finishing its sessions as on SIGTERM).
        wait_until(
            lambda: not any(_alive(pid) for pid in workers),
            10,
            "the orphaned workers to exit",
        )
    finally:
        _kill_all(workers)
