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


def test_writing_through_a_writable_link(
    shared_node: NodeProcess, alice: Cli, tmp_path: Path
) -> None:
    anyone = client(shared_node, tmp_path, "anyone")
    alice.ok("mkdir", "inbox")
    url = alice.ok("link", "create", "inbox", "--writable", "--max-uses", "3").out.strip()
    assert alice.ok("link", "list").lines[-1].endswith("uses 3  writable  no password")
    folder = tmp_path / "trip"
    (folder / "day1").mkdir(parents=True)
    (folder / "day1" / "a.txt").write_bytes(b"first day\n")
    anyone.ok("put-link", url, alice.cwd / "note.txt")
    anyone.ok("put-link", url, folder)
    assert alice.ok("ls", "inbox").lines == ["note.txt", "trip/"]
    assert alice.ok("cat", "inbox/trip/day1/a.txt").stdout == b"first day\n"
    anyone.ok("put-link", url, folder / "day1" / "a.txt", "trip/day2.txt")
    assert alice.ok("cat", "inbox/trip/day2.txt").stdout == b"first day\n"
    assert "used its 3 times" in anyone.fails("put-link", url, folder, code=8)

    readonly = alice.ok("link", "create", "inbox").out.strip()
    assert "read-only" in anyone.fails("put-link", readonly, folder, code=8)
    assert "does not exist" in anyone.fails("put-link", readonly, tmp_path / "none", code=2)
    assert alice.ok("ls", "inbox").lines == ["note.txt", "trip/"]
