"""The peer registry: backend pid → real client address, per process or shared by workers."""

from __future__ import annotations

import os
from pathlib import Path

from proxy.peers import PeerRegistry, forget_worker


def test_in_process_registry() -> None:
    peers = PeerRegistry()
    peers.add(101, "10.0.0.1:5000")
    peers.add(0, "10.0.0.2:5000")  # no BackendKeyData: nothing to record
    assert peers.lookup([101, 102]) == {101: "10.0.0.1:5000"}
    assert peers.snapshot() == {101: "10.0.0.1:5000"}
    peers.remove(101)
    peers.remove(101)  # twice: harmless
    assert peers.snapshot() == {}


def test_workers_see_each_others_sessions(tmp_path: Path) -> None:
    one, two = PeerRegistry(tmp_path), PeerRegistry(tmp_path)
    one.add(201, "[::1]:6000")
    two.add(202, "192.0.2.7:6001")
    assert one.lookup([202]) == {202: "192.0.2.7:6001"}
    assert two.snapshot() == {201: "[::1]:6000", 202: "192.0.2.7:6001"}
    two.remove(202)
    assert one.snapshot() == {201: "[::1]:6000"}


def test_a_dead_workers_entries_are_forgotten(tmp_path: Path) -> None:
    peers = PeerRegistry(tmp_path)
    peers.add(301, "192.0.2.1:1")
    (tmp_path / "302 999999999 192.0.2.2:2").touch()  # another worker's session
    forget_worker(tmp_path, 999999999)
    assert peers.snapshot() == {301: "192.0.2.1:1"}
    forget_worker(tmp_path, os.getpid())
    assert PeerRegistry(tmp_path).snapshot() == {}


def test_garbage_in_the_directory_is_ignored(tmp_path: Path) -> None:
    for name in ("notes", "401", "402 12", "x 1 a", "403 y a", "404 1 "):
        (tmp_path / name).touch()
    assert PeerRegistry(tmp_path).snapshot() == {}


def test_unix_socket_paths_survive_the_file_name(tmp_path: Path) -> None:
    one, two = PeerRegistry(tmp_path), PeerRegistry(tmp_path)
    one.add(501, "/run/app/.s.PGSQL.5432")
    assert two.snapshot() == {501: "/run/app/.s.PGSQL.5432"}
    one.remove(501)
    assert two.snapshot() == {}
