"""Secret links and publishing through the real CLI against a real node: a reader without an
account, passwords from the environment, uses running out, revocation, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Cli, NodeProcess, client

pytestmark = pytest.mark.e2e


def test_links_and_publishing(shared_node: NodeProcess, alice: Cli, tmp_path: Path) -> None:
    anyone = client(shared_node, tmp_path, "anyone")  # never logged in
    alice.ok("mkdir", "public")
    alice.ok("put", alice.cwd / "note.txt", "public")
    assert "not published" in anyone.fails("cat", "/alice/public/note.txt", code=4)
    assert alice.ok("publish", "public").out.startswith("published /alice/public:")
    assert anyone.ok("ls", "/alice/public").out == "note.txt\n"
    anyone.ok("get", "/alice/public/note.txt", tmp_path / "got.txt")
    assert (tmp_path / "got.txt").read_bytes() == b"hello\n"
    alice.ok("unpublish", "/alice/public")
    assert "not published" in anyone.fails("cat", "/alice/public/note.txt", code=4)

    secret = alice.with_env(PYRGOS_LINK_PASSWORD="open sesame")
    url = secret.ok("link", "create", "note.txt", "--password", "--max-uses", "1",
                    "--expires", "1h").out.strip()  # fmt: skip
    assert url.startswith(shared_node.url.rstrip("/") + "/secret/")
    (listed,) = alice.ok("link", "list").lines
    link_id = url.split("/")[-1].split("#")[0]
    assert listed.startswith(f"{link_id}  /alice/note.txt  expires ")
    assert listed.endswith("uses 1  read-only  password")
    assert "PYRGOS_LINK_PASSWORD" in anyone.fails("cat-link", url, code=3)
    wrong = anyone.with_env(PYRGOS_LINK_PASSWORD="open sesame?")
    assert "wrong link password" in wrong.fails("cat-link", url, code=3)
    reader = anyone.with_env(PYRGOS_LINK_PASSWORD="open sesame")
    assert reader.ok("cat-link", url).stdout == b"hello\n"
    assert "used its 1 times" in reader.fails("get-link", url, tmp_path, code=8)

    again = alice.ok("link", "create", "note.txt").out.strip()
    anyone.ok("get-link", again, tmp_path)
    assert (tmp_path / "note.txt").read_bytes() == b"hello\n"
    alice.ok("link", "revoke", link_id)
    assert "no such link" in reader.fails("cat-link", url, code=4)
    assert "no link with id" in alice.fails("link", "revoke", link_id, code=4)

    assert "secret link" in anyone.fails("cat-link", "http://127.0.0.1:1/secret/x", code=1)
    assert "duration" in alice.fails("link", "create", "note.txt", "--expires", "5w", code=2)
    assert "uses" in alice.fails("link", "create", "note.txt", "--max-uses", "0", code=2)
    assert "no terminal" in alice.fails("link", "create", "note.txt", "--password", code=2)
