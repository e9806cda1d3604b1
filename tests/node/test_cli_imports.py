"""What a `pyrgos` command imports: a command's start is mostly its imports, so each command
loads only what it uses (counted in a fresh process, never timed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Final

from node.client import Profile, SavedSession
from protocols.accounts import LoginData
from protocols.crypto import BoxingKey, SigningKey
from protocols.cryptree import Capability

# The node side: only `node …` and `swarm …` commands use it.
NODE_SIDE: Final = (
    "libp2p",
    "hypercorn",
    "starlette",
    "plyvel",
    "multiaddr",
    "node.server",
    "node.net",
    "node.store",
    "node.daemon",
    "node.swarm",
)
# What a session's requests need: commands that make none do without it.
CLIENT_SIDE: Final = ("trio", "h11", "node.client._api", "protocols.methods")
# Keys and codecs: what reading a session file needs.
CRYPTO: Final = ("nacl", "cryptography", "cbor2", "protocols.crypto")
# Runs one command in a fresh interpreter and writes the names of its loaded modules.
RUN: Final = """
import json, sys
from node.cli import main
try:
    main(sys.argv[2:])
except SystemExit:
    pass
with open(sys.argv[1], "w") as out:
    json.dump(sorted(sys.modules), out)
"""


def loaded(tmp_path: Path, *argv: str, env: dict[str, str]) -> tuple[set[str], str]:
    """The modules `pyrgos ARGV` loaded, and what it printed."""
    modules = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(modules), *argv],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert modules.exists(), done.stderr
    return set(json.loads(modules.read_text())), done.stdout + done.stderr


def among(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


def saved_session(profile: Path) -> None:
    identity = SigningKey.from_seed(bytes(range(2, 34)))
    home = Capability(
        owner=identity.public.key_hash(),
        writer=identity.public.key_hash(),
        label=bytes(range(5, 37)),
        bat=bytes(range(6, 38)),
        read_key=bytes(range(7, 39)),
        write_key=bytes(range(8, 40)),
    )
    data = LoginData(identity, BoxingKey.from_seed(bytes(range(3, 35))), home, bytes(32))
    session = SavedSession("http://127.0.0.1:9", "alice", data, bytes(32), 2**40)
    Profile(profile).save(session)


def test_help_imports_neither_side_nor_crypto(tmp_path: Path) -> None:
    modules, output = loaded(tmp_path, "--help", env={"HOME": str(tmp_path)})
    assert "usage: pyrgos" in output
    assert among(modules, NODE_SIDE + CLIENT_SIDE + CRYPTO) == []
    # The client package's names alone: --profile's default is found only when a command runs.
    assert among(modules, ("node.client",)) == ["node.client"]


def test_whoami_reads_the_session_file_and_makes_no_request(tmp_path: Path) -> None:
    saved_session(tmp_path / "profile")
    env = {"PYRGOS_PROFILE": str(tmp_path / "profile"), "PYRGOS_NODE": "http://127.0.0.1:9"}
    modules, output = loaded(tmp_path, "whoami", env=env)
    assert output == "alice at http://127.0.0.1:9\n"
    assert among(modules, NODE_SIDE + CLIENT_SIDE) == []
    assert "protocols.accounts" in modules  # it did read the session


def test_a_session_command_imports_no_node_side(tmp_path: Path) -> None:
    saved_session(tmp_path / "profile")
    # Port 9 on the loopback refuses: the command gets as far as its first request.
    env = {"PYRGOS_PROFILE": str(tmp_path / "profile"), "PYRGOS_NODE": "http://127.0.0.1:9"}
    modules, output = loaded(tmp_path, "ls", "/alice", env=env)
    assert "cannot reach the node at http://127.0.0.1:9" in output
    assert {"trio", "h11", "protocols.methods"} <= modules
    assert among(modules, ("httpx", "httpcore")) == []  # h11 alone carries the API
    assert among(modules, NODE_SIDE) == []
