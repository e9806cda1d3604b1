"""The social commands of the real CLI against a real node: safety numbers, verification and
the bad input that is refused before any follow request is sent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli, NodeProcess, client

pytestmark = pytest.mark.e2e


def test_fingerprints_verify_and_bad_input(
    shared_node: NodeProcess, alice: Cli, tmp_path: Path
) -> None:
    bob = client(shared_node, tmp_path, "bob")
    bob.ok("signup", "bob")
    mine = bob.ok("fingerprint").lines
    assert mine[0] == "your fingerprint (bob):"
    digits = " ".join(mine[1:4]).split()
    assert len(digits) == 12
    assert all(re.fullmatch(r"\d{5}", group) for group in digits)
    assert len(mine) == 4  # not a terminal: no QR code unless asked

    held = alice.ok("fingerprint", "bob", "--qr").lines
    assert held[0] == "fingerprint of bob (not verified):"
    assert " ".join(held[1:4]).split() == digits
    assert len(held) > 10  # the QR code follows

    line = alice.fails("verify", "bob", *(["11111"] * 12), code=8)
    assert "not the one" in line
    line = alice.fails("verify", "bob", "12345", code=1)
    assert "60 digits" in line
    assert alice.ok("verify", "bob", *digits).out == "verified bob's identity key\n"
    assert alice.ok("fingerprint", "bob").lines[0] == "fingerprint of bob (verified):"

    assert "unknown user" in alice.fails("follow", "nobody", code=4)
    assert "yourself" in alice.fails("follow", "alice", code=5)
    assert "do not follow" in alice.fails("unfollow", "bob", code=4)
    assert "does not follow you" in alice.fails("remove-follower", "bob", code=4)
    assert "usernames are" in alice.fails("follow", "Not-A-Name", code=9)
    assert alice.ok("following").out == ""
    assert alice.ok("followers").out == ""


def test_share_shared_unshare(shared_node: NodeProcess, alice: Cli, tmp_path: Path) -> None:
    dana = client(shared_node, tmp_path, "dana")
    dana.ok("signup", "dana")
    (tmp_path / "x.txt").write_bytes(b"shared bytes")
    alice.ok("mkdir", "sharing-album")
    alice.ok("put", tmp_path / "x.txt", "sharing-album/x.txt")
    line = alice.fails("share", "sharing-album", "dana", code=8)
    assert "does not follow you" in line
    dana.ok("follow", "alice")
    alice.ok("requests")
    alice.ok("accept", "dana")
    dana.ok("requests")
    assert (
        alice.ok("share", "sharing-album", "dana").out
        == "shared /alice/sharing-album with dana (read)\n"
    )
    assert dana.ok("ls", "/alice").out == "sharing-album/\n"
    assert dana.ok("cat", "/alice/sharing-album/x.txt").out == "shared bytes"
    assert "read-only" in dana.fails(
        "put", tmp_path / "x.txt", "/alice/sharing-album/y.txt", code=8
    )
    assert "shared by alice  read-only" in dana.ok("shared").out
    assert "shared with dana  read-only" in alice.ok("shared").out
    alice.ok("unshare", "sharing-album", "dana")
    assert "not shared" in dana.fails("cat", "/alice/sharing-album/x.txt", code=4)
    assert "not shared with dana" in alice.fails("unshare", "sharing-album", "dana", code=4)
    assert alice.ok("cat", "sharing-album/x.txt").out == "shared bytes"
