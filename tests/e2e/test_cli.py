"""End to end: the real `pyrgos` CLI against a real node process on 127.0.0.1 port 0."""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Final

import pytest
import trio

from node.cli._main import open_session
from node.client import FileSystem
from tests.e2e.conftest import (
    CALL_TIMEOUT,
    PYRGOS,
    Cli,
    NodeProcess,
    base_env,
    client,
    node_info,
    pyrgos,
)
from tests.node.test_fs import plant_bad_entries, rewrite_dir

pytestmark = pytest.mark.e2e

MiB: Final = 1024 * 1024
CHUNK: Final = 5 * MiB  # protocols.cryptree.CHUNK_BYTES: ranges below cross chunk boundaries
NEW_PASSWORD: Final = "a different horse battery"
UNITS: Final = {"B": 1, "KiB": 1024, "MiB": MiB, "GiB": 1024 * MiB, "TiB": 1024 * 1024 * MiB}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    return sha256(path.read_bytes())


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under root, by relative path."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def long_listing(cli: Cli, remote: str = "") -> dict[str, tuple[str, int]]:
    """`ls -l`: name -> (kind, size); folders keep their trailing slash."""
    entries = {}
    for line in cli.ok("ls", "-l", remote).lines:
        kind, size, _day, _time, name = line.split(maxsplit=4)
        entries[name] = (kind, int(size))
    return entries


def session_mode(profile: Path) -> int:
    return stat.S_IMODE((profile / "session.cbor").stat().st_mode)


def make_folder(root: Path) -> Path:
    """A folder with nested files: text, binary, an empty file, an empty folder."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "readme.txt").write_text("top level\n")
    (root / "sub" / "two.txt").write_text("second level\n")
    (root / "sub" / "deeper" / "blob.bin").write_bytes(os.urandom(300_000))
    (root / "sub" / "deeper" / "empty").write_bytes(b"")
    return root


def test_scenario(node: NodeProcess, cli: Cli, tmp_path: Path) -> None:
    data = os.urandom(12 * MiB)
    big = tmp_path / "big.bin"
    big.write_bytes(data)
    digest = sha256(data)
    profile_a = Path(cli.env["PYRGOS_PROFILE"])

    # signup logs in; the session file holds login keys, so it is private
    assert "alice" in cli.ok("signup", "alice").out
    assert session_mode(profile_a) == 0o600
    assert stat.S_IMODE(profile_a.stat().st_mode) & 0o077 == 0

    # a 12 MiB file: put, get, ranges
    cli.ok("put", big, "big.bin")
    cli.ok("get", "big.bin", tmp_path / "big.back")
    assert file_sha256(tmp_path / "big.back") == digest
    offset, length = CHUNK - 1234, CHUNK + 5678  # starts in chunk 0, ends in chunk 2
    ranged = cli.ok("cat", "big.bin", "--offset", str(offset), "--length", str(length)).stdout
    assert ranged == data[offset : offset + length]
    tail = cli.ok("cat", "big.bin", "--offset", str(len(data) - 10), "--length", "100").stdout
    assert tail == data[-10:]
    assert cli.ok("ls").lines == ["big.bin"]
    assert long_listing(cli) == {"big.bin": ("-", len(data))}

    # folders: mkdir -p, put into a folder, mv (rename, move between folders), rm, rm -r
    note = tmp_path / "notes.txt"
    note.write_bytes(b"draft one\n")
    cli.ok("mkdir", "-p", "docs/2024/drafts")
    cli.ok("mkdir", "archive")
    cli.ok("put", note, "docs/2024/drafts")  # into an existing folder: keeps its name
    cli.ok("mv", "docs/2024/drafts/notes.txt", "docs/2024/drafts/final.txt")
    cli.ok("mv", "docs/2024/drafts/final.txt", "archive")
    cli.ok("mv", "docs/2024", "archive/y2024")
    archive = long_listing(cli, "archive")
    assert archive.keys() == {"final.txt", "y2024/"}
    assert archive["final.txt"] == ("-", len(b"draft one\n"))
    assert archive["y2024/"][0] == "d"
    assert cli.ok("ls", "archive/y2024").lines == ["drafts/"]
    assert cli.ok("cat", "archive/final.txt").stdout == b"draft one\n"
    refused = cli.fails("rm", "archive")
    assert "-r" in refused
    assert cli.ok("ls", "archive").lines == ["final.txt", "y2024/"]
    cli.ok("rm", "docs")  # emptied by the move
    cli.ok("rm", "-r", "archive")
    assert cli.ok("ls").lines == ["big.bin"]
    cli.ok("mkdir", ".state")  # names starting with "." are listed only by `ls -a`
    assert cli.ok("ls").lines == ["big.bin"]
    assert cli.ok("ls", "-a").lines == [".state/", "big.bin"]
    cli.ok("rm", ".state")

    # a folder with nested files, up and down
    folder = make_folder(tmp_path / "photos")
    cli.ok("put", folder, "photos")
    listing = long_listing(cli, "photos")
    assert listing["readme.txt"] == ("-", len("top level\n"))
    assert listing["sub/"][0] == "d"
    assert listing["empty-dir/"][0] == "d"
    cli.ok("get", "photos", tmp_path / "photos.back")
    assert tree(tmp_path / "photos.back") == tree(folder)

    # a second device logs in and sees the same files
    bob = client(node, tmp_path, "profile-b")
    bob.ok("login", "alice")
    assert session_mode(tmp_path / "profile-b") == 0o600
    assert bob.ok("ls").lines == ["big.bin", "photos/"]
    assert bob.ok("cat", "photos/sub/two.txt").stdout == b"second level\n"

    # passwd: a wrong current password changes nothing; then old fails, new works
    wrong = cli.with_env(PYRGOS_PASSWORD="not the password", PYRGOS_NEW_PASSWORD=NEW_PASSWORD)
    wrong.fails("passwd", code=3)
    cli.with_env(PYRGOS_NEW_PASSWORD=NEW_PASSWORD).ok("passwd")
    assert session_mode(profile_a) == 0o600
    assert cli.ok("ls").lines == ["big.bin", "photos/"]  # this device's session follows
    carol = client(node, tmp_path, "profile-c")
    assert "password" in carol.fails("login", "alice", code=3)
    assert not (tmp_path / "profile-c" / "session.cbor").exists()
    carol.with_env(PYRGOS_PASSWORD=None).ok(
        "login", "alice", "--password-stdin", stdin=f"{NEW_PASSWORD}\n".encode()
    )
    assert carol.ok("ls").lines == ["big.bin", "photos/"]
    assert "`pyrgos login alice`" in bob.fails("ls", code=3)  # old password's keys: log in

    # space
    space = cli.ok("space").out.strip()
    match = re.fullmatch(r"used ([\d.]+) (\S+) of ([\d.]+) (\S+) \(([\d.]+)%\)", space)
    assert match is not None, space
    used = float(match[1]) * UNITS[match[2]]
    quota = float(match[3]) * UNITS[match[4]]
    assert 12 * MiB <= used < quota

    # node info and gc while running
    info = node_info(node)
    assert info["running"] is True
    assert info["api"] == node.url
    assert info["test_mode"] is True
    assert info["node_id"]
    gc = pyrgos("node", "gc", "--home", node.home, env=base_env())
    assert gc.code == 0, str(gc)
    assert re.fullmatch(r"deleted \d+ blocks, freed \d+ bytes\n", gc.out), str(gc)

    # restart: a new port, found through PYRGOS_HOME/api; everything intact
    node.stop_cleanly()
    again = pyrgos("node", "init", "--exist-ok", "--home", node.home, env=base_env())
    assert (again.code, again.stdout) == (0, b""), str(again)  # `make run`: a no-op here
    node.start()
    restarted = node_info(node)
    assert restarted["api"] == node.url
    assert restarted["node_id"] == info["node_id"]
    assert cli.ok("ls").lines == ["big.bin", "photos/"]
    cli.ok("get", "big.bin", tmp_path / "big.restarted")
    assert file_sha256(tmp_path / "big.restarted") == digest
    carol.ok("get", "photos", tmp_path / "photos.restarted")
    assert tree(tmp_path / "photos.restarted") == tree(folder)
    assert session_mode(profile_a) == 0o600


@pytest.mark.parametrize(
    ("argv", "env", "profile", "code", "says"),
    [
        pytest.param(("frobnicate",), {}, "alice", 2, "invalid choice", id="unknown-command"),
        pytest.param(("ls", "--bogus"), {}, "alice", 2, "--bogus", id="unknown-option"),
        pytest.param(("cat",), {}, "alice", 2, "REMOTE", id="missing-argument"),
        pytest.param(
            ("login", "alice"),
            {"PYRGOS_PASSWORD": "not the password"},
            "fresh",
            3,
            "wrong password",
            id="wrong-password",
        ),
        pytest.param(("login", "nobody"), {}, "fresh", 4, "nobody", id="unknown-user"),
        pytest.param(("signup", "alice"), {}, "fresh", 5, "taken", id="taken-username"),
        pytest.param(
            ("signup", "bob"),
            {"PYRGOS_PASSWORD": "short"},
            "fresh",
            9,
            "password",
            id="weak-password",
        ),
        pytest.param(
            ("login", "alice"),
            {"PYRGOS_PASSWORD": None},
            "fresh",
            2,
            "PYRGOS_PASSWORD",
            id="no-password-source",
        ),
        pytest.param(("ls",), {}, "fresh", 4, "not logged in", id="not-logged-in"),
        pytest.param(("put", "missing.bin", "x"), {}, "alice", 2, "missing.bin", id="put-missing"),
        pytest.param(("cat", "missing.txt"), {}, "alice", 4, "missing.txt", id="cat-missing"),
    ],
)
def test_bad_input(
    alice: Cli,
    tmp_path: Path,
    argv: tuple[str, ...],
    env: dict[str, str | None],
    profile: str,
    code: int,
    says: str,
) -> None:
    cli = alice.with_env(**env)
    if profile == "fresh":
        cli = cli.with_env(PYRGOS_PROFILE=str(tmp_path / "fresh"))
    line = cli.fails(*argv, code=code)
    assert says in line
    assert not (tmp_path / "fresh" / "session.cbor").exists()


def test_node_refuses_a_second_run_on_its_home(shared_node: NodeProcess, alice: Cli) -> None:
    """Two nodes on one home would share a database: the second must fail, one line."""
    second = Cli(base_env(), alice.cwd)
    line = second.fails("node", "run", "--home", shared_node.home)
    assert "another node" in line
    assert shared_node.api_file.read_text().strip() == shared_node.url
    assert alice.ok("cat", "note.txt").stdout == b"hello\n"


def test_cat_into_a_closed_pipe(alice: Cli, tmp_path: Path) -> None:
    """`pyrgos cat F | head -c 10`: the reader leaves early; no traceback, no error line."""
    data = os.urandom(MiB)
    (tmp_path / "one.bin").write_bytes(data)
    alice.ok("put", tmp_path / "one.bin", "one.bin")
    with subprocess.Popen(
        [str(PYRGOS), "cat", "one.bin"],
        env=alice.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as cat:
        assert cat.stdout is not None
        assert cat.stderr is not None
        assert cat.stdout.read(10) == data[:10]
        cat.stdout.close()
        try:
            code = cat.wait(timeout=CALL_TIMEOUT)
        finally:
            cat.kill()
        stderr = cat.stderr.read().decode()
    assert stderr == ""
    assert code != 0


def test_bad_entries_and_planted_links(
    shared_node: NodeProcess, alice: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory damaged by another writer stays usable, and a link planted in a download
    folder is refused; every message is one line on stderr."""
    local = tmp_path / "damaged"
    (local / "sub").mkdir(parents=True)
    for name in ("a.jpg", "garbled", "wrong-bat", "bad-link", "sub/c.jpg"):
        (local / name).write_bytes(name.encode())
    alice.ok("put", local, "damaged")

    async def damage() -> None:
        monkeypatch.setenv("PYRGOS_NODE", shared_node.url)
        profile = argparse.Namespace(profile=Path(alice.env["PYRGOS_PROFILE"]))
        async with open_session(profile) as session:
            await rewrite_dir(FileSystem(session), "damaged", plant_bad_entries)

    trio.run(damage)
    shown = alice.ok("ls", "damaged")
    assert shown.lines == ["a.jpg", "bad-link", "garbled", "missing", "sub/", "wrong-bat"]
    assert shown.stderr.startswith("pyrgos: warning: skipped 3 unreadable entries in damaged")
    assert len(shown.stderr.splitlines()) == 1
    assert long_listing(alice, "damaged").keys() == {"a.jpg", "sub/"}

    got = alice.run("get", "damaged", tmp_path / "out")
    assert got.code == 11, str(got)
    assert got.stderr.startswith("pyrgos: warning: skipped 7 unreadable entries"), str(got)
    assert len(got.stderr.splitlines()) == 1
    assert tree(tmp_path / "out") == {"a.jpg": b"a.jpg", "sub": None, "sub/c.jpg": b"sub/c.jpg"}

    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "again" / "damaged").mkdir(parents=True)
    (tmp_path / "again" / "damaged" / "sub").symlink_to(outside)  # into a folder: again/damaged
    assert "symbolic link" in alice.fails("get", "damaged", tmp_path / "again", code=5)
    assert list(outside.iterdir()) == []

    assert alice.ok("rm", "--bad", "damaged").lines == ["removed 7 unreadable entries"]
    shown = alice.ok("ls", "damaged")
    assert (shown.lines, shown.stderr) == (["a.jpg", "sub/"], "")
    alice.ok("rm", "-r", "damaged")


def test_accounts_weak_kdf_warning_logout_and_throttled_logins(
    node: NodeProcess, cli: Cli, tmp_path: Path
) -> None:
    # Signup on a test-mode node with the client's own opt-in: the account is weak, and says so.
    signup = cli.ok("signup", "alice")
    assert "WARNING" in signup.stderr
    assert "PYRGOS_INSECURE_TEST_KDF" in signup.stderr
    # Without the opt-in, the node's word is not enough: the client refuses its parameters.
    strict = client(node, tmp_path, "profile-strict").with_env(PYRGOS_INSECURE_TEST_KDF=None)
    assert "below production strength" in strict.fails("login", "alice", code=8)

    # logout ends the session at the node: a copy of the session file is useless.
    profile = Path(cli.env["PYRGOS_PROFILE"])
    saved = (profile / "session.cbor").read_bytes()
    assert cli.ok("logout").out == "logged out\n"
    (profile / "session.cbor").write_bytes(saved)
    assert "`pyrgos login alice`" in cli.fails("ls", code=3)

    # logout --all ends the sessions of every device.
    other = client(node, tmp_path, "profile-other")
    other.ok("login", "alice")
    cli.ok("login", "alice")
    assert cli.ok("logout", "--all").out == "logged out everywhere\n"
    assert "has ended" in other.fails("mkdir", "x", code=3)

    # Wrong passwords: a few are free, then the node says how long to wait.
    wrong = client(node, tmp_path, "profile-wrong").with_env(PYRGOS_PASSWORD="not the password")
    for _ in range(5):
        assert "wrong password" in wrong.fails("login", "alice", code=3)
    assert re.search(r"try again in \d+ seconds", wrong.fails("login", "alice", code=10))
