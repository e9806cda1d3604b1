"""The swarm file and a node's ready file: what is written reads back, and what is damaged is
refused with a message naming what is wrong (no processes here; tests/e2e/test_swarm.py runs
real swarms)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from node import swarm
from node.home import NodeHome, Ready
from protocols.errors import MalformedInput, NotFound

PEER = "12D3KooWAVKp1ssRdZgiShwoH1oqw9qvxv41gzGYvToQxRUaAxFL"
OTHER = "12D3KooWEd4GNWQXy2fesb763TP6aAqZQpDe82Qzf8c9d8z4KJ5W"


def node(name: str, peer: str, port: int) -> swarm.SwarmNode:
    return swarm.SwarmNode(
        name,
        peer,
        f"http://127.0.0.1:{port}",
        f"/ip4/127.0.0.1/tcp/{port + 1}/p2p/{peer}",
        4242,
        Path(f"/s/nodes/{name}"),
        Path(f"/s/logs/{name}.log"),
    )


SWARM = swarm.Swarm(
    "up",
    (node("n1", PEER, 4000), node("n2", OTHER, 4100)),
    (
        swarm.SwarmUser("user1", "n1", Path("/s/users/user1")),
        swarm.SwarmUser("user2", "n2", Path("/s/users/user2")),
    ),
)


def test_a_swarm_file_reads_back_and_is_saved_whole(tmp_path: Path) -> None:
    assert swarm.Swarm.from_json(SWARM.to_json()) == SWARM
    swarm.save(tmp_path, SWARM)
    assert swarm.load(tmp_path) == SWARM
    assert swarm.load_file(tmp_path / "swarm.json") == SWARM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["swarm.json"]
    assert SWARM.users_of(SWARM.nodes[1]) == ["user2"]
    env = swarm.user_env(SWARM, "user2")
    assert env == {
        "PYRGOS_NODE": "http://127.0.0.1:4100",
        "PYRGOS_PROFILE": "/s/users/user2",
        "PYRGOS_INSECURE_TEST_KDF": "1",
    }
    with pytest.raises(NotFound, match="no user 'user3'"):
        swarm.user_env(SWARM, "user3")
    config = swarm.join_config(tmp_path)
    assert (config.pki, config.test_mode, config.api) == (SWARM.pki.p2p, True, "127.0.0.1:0")
    assert config.listen == "/ip4/127.0.0.1/tcp/0"


def damaged(**changes: object) -> str:
    value = json.loads(SWARM.to_json())
    for key, change in changes.items():
        if key.startswith("node_"):
            value["nodes"][0][key.removeprefix("node_")] = change
        else:
            value[key] = change
    return json.dumps(value)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[]", "not a map"),
        (damaged(version=2), "unknown version 2"),
        (damaged(version=True), "unknown version"),
        (damaged(state="starting"), "state"),
        (damaged(nodes=[]), "1 to 64"),
        (damaged(users={}), "0 to 1000"),
        (damaged(node_pki_role="mirror"), "PKI root"),
        (damaged(node_name="n2"), "same name"),
        (damaged(node_peer_id="not-a-peer"), "n1"),
        (damaged(node_p2p=f"/ip4/10.0.0.1/tcp/1/p2p/{PEER}"), "p2p address"),
        (damaged(node_p2p=f"/ip4/127.0.0.1/tcp/1/p2p/{OTHER}"), "p2p address"),
        (damaged(node_p2p=f"/ip4/127.0.0.1/tcp/0/p2p/{PEER}"), "p2p address"),
        (damaged(node_p2p=f"/ip4/127.0.0.1/tcp/1/x/p2p/{PEER}"), "p2p address"),
        (damaged(node_p2p="/ip4/127.0.0.1/tcp/1"), "p2p address"),
        (damaged(node_p2p=f"/tcp/1/p2p/{PEER}"), "p2p address"),
        (damaged(node_api="http://127.0.0.1:0"), "API URL"),
        (damaged(node_api="https://127.0.0.1:4000"), "API URL"),
        (damaged(node_pid=0), "pid"),
        (damaged(node_pid=1.5), "pid"),
        (damaged(node_home="relative/home"), "absolute"),
        (damaged(node_extra=1), "not a map"),
        (damaged(users=[{"name": "Root", "node": "n1", "profile": "/p"}]), "user"),
        (damaged(users=[{"name": "user1", "node": "n9", "profile": "/p"}]), "not one of"),
    ],
)
def test_a_damaged_swarm_file_is_refused(tmp_path: Path, text: str, reason: str) -> None:
    (tmp_path / "swarm.json").write_text(text)
    with pytest.raises(MalformedInput, match="is damaged") as refused:
        swarm.load(tmp_path)
    assert reason in refused.value.message
    with pytest.raises(MalformedInput):
        swarm.join_config(tmp_path / "swarm.json")


def test_oversized_or_binary_swarm_files_are_refused_and_a_down_swarm_cannot_be_joined(
    tmp_path: Path,
) -> None:
    (tmp_path / "swarm.json").write_bytes(b" " * (swarm.MAX_SWARM_FILE + 1))
    with pytest.raises(MalformedInput, match="over"):
        swarm.load(tmp_path)
    (tmp_path / "swarm.json").write_bytes(b"\xff\xfe")
    with pytest.raises(MalformedInput, match="UTF-8"):
        swarm.load(tmp_path)
    swarm.save(tmp_path, replace(SWARM, state="down"))
    with pytest.raises(Exception, match="is down"):
        swarm.join_config(tmp_path)
    with pytest.raises(NotFound):
        swarm.load(tmp_path / "elsewhere")


def test_counts_are_bounded() -> None:
    swarm.check_counts(1, 0)
    swarm.check_counts(swarm.MAX_NODES, swarm.MAX_USERS)
    for nodes, users in ((0, 0), (swarm.MAX_NODES + 1, 0), (1, -1), (1, swarm.MAX_USERS + 1)):
        with pytest.raises(MalformedInput):
            swarm.check_counts(nodes, users)


def test_only_a_node_run_of_the_recorded_home_counts_as_running(tmp_path: Path) -> None:
    assert not swarm._alive(os.getpid(), tmp_path)  # this process is no node of tmp_path
    assert not swarm._alive(2**31 - 1, tmp_path)  # no such process


def test_a_ready_file_reads_back_and_a_damaged_one_is_refused(tmp_path: Path) -> None:
    home = NodeHome(tmp_path)
    assert home.ready() is None
    ready = Ready(PEER, "http://127.0.0.1:4000", (f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}",), 77)
    home.write_ready(ready)
    assert home.ready() == ready
    good = json.loads(ready.to_json())
    for text in (
        "{",
        json.dumps({**good, "version": 2}),
        json.dumps({**good, "pid": -1}),
        json.dumps({**good, "addrs": "x"}),
        json.dumps({**good, "more": 1}),
        " " * 70_000,
    ):
        home.ready_file.write_text(text)
        with pytest.raises(MalformedInput):
            home.ready()
