"""SIGHUP with ``--workers``: the supervisor reads and checks the configuration, then
sends what it accepted to each worker through the worker's own pipe.

* A worker must end up with the settings the supervisor validated, not with whatever the
  file holds when the worker gets round to reading it (an editor truncating it, the next
  version half-written).
* A SIGHUP that reaches a worker while it is still starting (forked with the old settings,
  its loop's handler not installed yet) must not be lost.
* A configuration file that is not UTF-8 is an invalid configuration like any other: it
  must not kill the supervisor (and orphan its workers) or print a traceback.
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


def _status_mask(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no {field} in /proc/{pid}/status")


_HUP = 1 << (signal.SIGHUP - 1)


def _reloads(log: str, pid: int) -> list[str]:
    """The "configuration reloaded" lines of process ``pid`` (text or JSON)."""
    found = []
    for line in log.splitlines():
        if "configuration reloaded" not in line:
            continue
        match = re.search(r'\[(\d+)\]|"pid": (\d+)', line)
        if match and int(match.group(1) or match.group(2)) == pid:
            found.append(line)
    return found


def _listening(log: str, pid: int) -> bool:
    return any(
        "listening on" in line and (f"[{pid}]" in line or f'"pid": {pid}' in line)
        for line in log.splitlines()
    )


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_worker_applies_the_configuration_the_supervisor_validated(
    start_proxy, pg: PgServer, tmp_path: Path
) -> None:
    """The supervisor reads version B of the file, accepts it and sends it on; before a
    (busy) worker gets round to it, the file is truncated (an editor about to write the
    next version: an empty file is a valid configuration). The worker must apply B, what
    the supervisor validated and what every worker started from now on runs with, not
    what the file holds when it looks (a worker that re-read the file applied the
    defaults)."""
    config = tmp_path / "proxy.toml"
    _toml(config, workers=2, log_level="info")
    proxy = start_proxy("--config", str(config))
    supervisor = proxy.process.pid
    wait_until(lambda: len(_children(supervisor)) == 2, 10, "two workers")
    wait_until(lambda: proxy.log().count("listening on") == 2, 10, "both workers listening")
    busy = min(_children(supervisor))
    os.kill(busy, signal.SIGSTOP)  # a worker that has not got round to its reload yet
    try:
        _toml(config, workers=2, log_level="info", log_format="json")
        proxy.process.send_signal(signal.SIGHUP)
        # The supervisor accepted B and sent it to both workers.
        wait_until(lambda: "configuration sent to 2 worker(s)" in proxy.log(), 10, "sent")
        config.write_text("")  # truncated: the next version is being written
    finally:
        os.kill(busy, signal.SIGCONT)
    (line,) = wait_until(lambda: _reloads(proxy.log(), busy), 10, "the worker's reload")
    assert "log-format json" in line, line


def test_sighup_while_a_worker_starts_is_not_lost(
    start_proxy, pg: PgServer, tmp_path: Path
) -> None:
    """A worker restarted after a crash is forked with the settings of the time; settings
    accepted while it is still starting (its loop not running yet) must reach it (a
    SIGHUP forwarded then was ignored: that worker ran with the old settings until the
    next SIGHUP). The worker's start is held at a known point: opening its audit log, a
    FIFO nobody reads yet."""
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the first workers start
    config = tmp_path / "proxy.toml"
    _toml(config, workers=2, log_level="info", audit_log=str(fifo))
    proxy = start_proxy("--config", str(config))
    supervisor = proxy.process.pid
    wait_until(lambda: len(_children(supervisor)) == 2, 10, "two workers")
    wait_until(lambda: proxy.log().count("listening on") == 2, 10, "both workers listening")
    first = set(_children(supervisor))
    os.close(reader)
    reader = -1
    try:
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        (survivor,) = first - {victim}

        def restarted() -> int | None:
            new = set(_children(supervisor)) - first
            return next(iter(new)) if new else None

        worker = wait_until(restarted, 10, "the worker started again")
        assert isinstance(worker, int)
        # Forked, SIGHUP ignored (or blocked) until its loop handles it, held opening the
        # audit FIFO.
        wait_until(
            lambda: (_status_mask(worker, "SigIgn") | _status_mask(worker, "SigBlk")) & _HUP,
            10,
            "SIGHUP set aside",
        )
        assert not _listening(proxy.log(), worker)

        _toml(config, workers=2, log_level="info", log_format="json", audit_log=str(fifo))
        proxy.process.send_signal(signal.SIGHUP)
        # The survivor says so before it reopens the audit FIFO (and blocks there).
        wait_until(lambda: _reloads(proxy.log(), survivor), 10, "the survivor's reload")
        wchan = Path(f"/proc/{supervisor}/wchan")
        if wchan.read_text() not in ("", "0"):  # the supervisor is back in os.wait()
            wait_until(lambda: wchan.read_text() == "do_wait", 10, "the forward done")

        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # both go on
        wait_until(lambda: _listening(proxy.log(), worker), 10, "the new worker listening")
        wait_until(
            lambda: _reloads(proxy.log(), worker),
            5,
            "the worker started during the SIGHUP to reload too",
        )
    finally:
        if reader >= 0:
            os.close(reader)


def test_sighup_with_a_non_utf8_config_file_keeps_the_supervisor(
    start_proxy, pg: PgServer, tmp_path: Path
) -> None:
    """A config file that is not UTF-8 (tomllib raises UnicodeDecodeError, which is no
    TOMLDecodeError) is refused like any invalid file; the supervisor keeps running (on
    current code the exception leaves the signal handler, the supervisor exits with a
    traceback and its workers are left running, orphaned)."""
    config = tmp_path / "proxy.toml"
    _toml(config, workers=2, log_level="info")
    proxy = start_proxy("--config", str(config))
    supervisor = proxy.process.pid
    wait_until(lambda: len(_children(supervisor)) == 2, 10, "two workers")
    wait_until(lambda: proxy.log().count("listening on") == 2, 10, "both workers listening")
    workers = set(_children(supervisor))
    try:
        config.write_bytes(b'log_level = "info"\n# \xff\xfe\n')
        proxy.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: "reload failed" in proxy.log() or proxy.process.poll() is not None,
            10,
            "the refusal",
        )
        assert proxy.process.poll() is None, proxy.log()
        assert "reload failed, settings unchanged" in proxy.log()
        assert set(_children(supervisor)) == workers
        assert "Traceback" not in proxy.log()
        with proxy.connect() as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        if proxy.process.poll() is not None:
            _kill_all(workers)  # orphaned by the supervisor's death


def test_sighup_with_a_non_utf8_config_file_single_process(
    start_proxy, pg: PgServer, tmp_path: Path
) -> None:
    """Without workers: the reload is refused with the usual one line, no traceback."""
    config = tmp_path / "proxy.toml"
    _toml(config, log_level="info")
    proxy = start_proxy("--config", str(config))
    config.write_bytes(b'log_level = "info"\n# \xff\xfe\n')
    proxy.process.send_signal(signal.SIGHUP)
    wait_until(
        lambda: "reload failed" in proxy.log() or "Traceback" in proxy.log(), 10, "the refusal"
    )
    assert "reload failed, settings unchanged" in proxy.log()
    assert "Traceback" not in proxy.log()
    with proxy.connect() as conn:
        assert conn.execute("select 1").fetchone() == (1,)
