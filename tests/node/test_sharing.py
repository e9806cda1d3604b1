"""Sharing across nodes (DESIGN §6, §10): read and writable shares read and written at the
owner's paths through the reader's own node, revocation by key rotation, and bad input."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
import trio

from node.client import FileSystem, NodeApi, Session, get_tree, links, sharing, social
from node.client._blocks import Blocks
from node.client._resolve import Listing
from protocols import crypto
from protocols.cid import CID
from protocols.cryptree import CHUNK_BYTES, Capability, Entry
from protocols.errors import Conflict, Corrupted, Denied, NotFound
from protocols.shares import SharedItem, decode_caps, encode_caps
from tests.node.conftest import Users

TIMEOUT = 60


async def befriend(users: Users, owner: str, follower: str) -> None:
    """`follower` follows `owner`, who accepts."""
    await social.follow(users.fs(follower), owner)
    await social.requests(users.fs(owner))
    await social.accept(users.fs(owner), follower)
    assert (await social.requests(users.fs(follower))).accepted == [owner]


async def read_all(fs: FileSystem, path: str) -> bytes:
    async with fs.read(path) as pieces:
        return b"".join([piece async for piece in pieces])


async def test_share_read_then_write_then_unshare(users: Users, tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        alice = users.fs("alice")
        await alice.mkdir("photos")
        await alice.write_file("photos/x.jpg", io.BytesIO(b"picture"))
        await alice.write_file("notes.txt", io.BytesIO(b"private"))
        await befriend(users, "alice", "bob")
        await befriend(users, "alice", "carol")

        # Read: bob reads /alice/photos through his own node; nothing else of alice's.
        await sharing.share(users.fs("alice"), "photos", "bob")
        await sharing.share(users.fs("alice"), "/alice/photos", "carol")
        bob = users.fs("bob")
        assert await bob.listdir("/alice") == [Listing("photos", True)]
        assert await bob.listdir("/alice/photos") == [Listing("x.jpg", False)]
        assert await read_all(bob, "/alice/photos/x.jpg") == b"picture"
        assert await get_tree(users.fs("bob"), "/alice/photos", tmp_path / "got", None) == 0
        assert (tmp_path / "got" / "x.jpg").read_bytes() == b"picture"
        with pytest.raises(NotFound, match="not shared"):
            await users.fs("bob").stat("/alice/notes.txt")
        with pytest.raises(Denied, match="read-only"):
            await users.fs("bob").write_file("/alice/photos/y.jpg", io.BytesIO(b"y"))

        # Write: the item becomes its own writer; bob writes, alice reads it; carol keeps her
        # read access through the new capability, and the item's secret link its item.
        url = await links.create_link(users.fs("alice"), "photos", node_url=users.urls[2])
        item = await sharing.share(users.fs("alice"), "photos", "bob", write=True)
        assert item.writable
        async with NodeApi(users.urls[2]) as anonymous:
            linked = await links.link_filesystem(anonymous, url)
            assert await read_all(linked, "/link/x.jpg") == b"picture"
        assert item.cap.writer != users.sessions["alice"].owner
        await users.fs("bob").write_file("/alice/photos/y.jpg", io.BytesIO(b"from bob"))
        await users.fs("bob").mkdir("/alice/photos/trip")
        assert await read_all(users.fs("alice"), "photos/y.jpg") == b"from bob"
        assert await read_all(users.fs("carol"), "/alice/photos/y.jpg") == b"from bob"
        await users.fs("bob").write_file("/alice/photos/tmp", io.BytesIO(b"t"))
        await users.fs("bob").move("/alice/photos/tmp", "/alice/photos/trip/tmp")
        await users.fs("bob").remove("/alice/photos/trip/tmp")
        (top,) = await users.fs("bob").listdir("/alice", long=True)
        assert top.props is not None
        assert (top.name, top.props.name, top.props.size) == ("photos", "photos", 3)
        with pytest.raises(NotFound, match="not shared"):
            await users.fs("bob").write_file("/alice/z.txt", io.BytesIO(b"z"))
        listed = await sharing.shared(users.fs("alice"))
        assert [(name, i.path, i.writable) for name, i in listed.mine] == [
            ("bob", "/alice/photos", True),
            ("carol", "/alice/photos", False),
        ]
        theirs = await sharing.shared(users.fs("bob"))
        assert [(name, i.path) for name, i in theirs.with_me] == [("alice", "/alice/photos")]
        assert not theirs.problems

        # Unshare for bob: his old capability finds nothing, carol reads the new version.
        old = item.cap
        await sharing.unshare(users.fs("alice"), "photos", "bob")
        await users.fs("alice").write_file("photos/x.jpg", io.BytesIO(b"new version"))
        assert await read_all(users.fs("carol"), "/alice/photos/x.jpg") == b"new version"
        with pytest.raises(NotFound, match="not shared"):
            await users.fs("bob").listdir("/alice/photos")
        assert await users.fs("bob").listdir("/alice") == []
        route = users.sessions["alice"].route
        with pytest.raises((NotFound, Denied)):
            await users.fs("bob").contents_of(old, route)
        with pytest.raises((NotFound, Denied)):
            await users.fs("bob").write_file("/alice/photos/w.txt", io.BytesIO(b"w"))
        # Nor can bob fetch the new blocks with what he held: they need the new BATs.
        new = await users.fs("alice").capability("photos/x.jpg")
        bad = Capability(new.owner, new.writer, new.label, old.bat, new.read_key)
        with pytest.raises((NotFound, Denied)):
            await users.fs("bob").read_capability(bad, route, 1000)
        assert await users.fs("carol").listdir("/alice/photos") == [
            Listing("trip", True), Listing("x.jpg", False), Listing("y.jpg", False)
        ]  # fmt: skip


async def test_bad_shares_change_nothing(users: Users) -> None:
    with trio.fail_after(TIMEOUT):
        alice = users.fs("alice")
        await alice.mkdir("photos")
        await befriend(users, "alice", "bob")
        # carol does not follow alice: refused, nothing written.
        with pytest.raises(Denied, match="does not follow you"):
            await sharing.share(users.fs("alice"), "photos", "carol")
        with pytest.raises(NotFound):
            await users.fs("alice").stat("shared/carol/caps")
        with pytest.raises(NotFound, match="not shared with bob"):
            await sharing.unshare(users.fs("alice"), "photos", "bob")
        with pytest.raises(NotFound, match="no such"):
            await sharing.share(users.fs("alice"), "nothing", "bob")
        with pytest.raises(Conflict, match="home directory"):
            await sharing.share(users.fs("alice"), "/alice", "bob")
        with pytest.raises(Conflict, match="social state"):
            await sharing.share(users.fs("alice"), ".pyrgos", "bob")
        with pytest.raises(Denied, match="your own items"):
            await sharing.share(users.fs("alice"), "/bob/x", "bob")
        with pytest.raises(Conflict, match="yourself"):
            await sharing.share(users.fs("alice"), "photos", "alice")
        assert not (await sharing.shared(users.fs("alice"))).mine
        # bob reads nothing of alice's yet; carol follows no one.
        assert await users.fs("bob").listdir("/alice") == []
        with pytest.raises(NotFound, match="do not follow"):
            await users.fs("carol").listdir("/alice")


async def test_a_hostile_owners_caps_file(users: Users) -> None:
    """alice writes what she likes into the caps file bob reads: a capability of another
    owner is ignored, a forged one fails clearly when used, a malformed file is reported."""
    with trio.fail_after(TIMEOUT):
        await users.fs("alice").mkdir("photos")
        await befriend(users, "alice", "bob")
        await sharing.share(users.fs("alice"), "photos", "bob")
        real = (await users.fs("alice").capability("photos")).read_only()
        carol = users.sessions["carol"]
        forged = Capability(real.owner, real.writer, bytes(32), bytes(32), bytes(32))
        items = [
            SharedItem("/alice/photos", forged, False, 1),
            SharedItem(
                "/alice/carols",
                (await users.fs("carol").capability("/carol")).read_only(),
                False,
                1,
            ),
            SharedItem("/alice/real", real, False, 1),
        ]
        assert items[1].cap.owner == carol.owner
        await users.fs("alice").write_bytes("shared/bob/caps", encode_caps(items))
        bob = users.fs("bob")
        assert await bob.listdir("/alice") == [Listing("real", True)]
        with pytest.raises(NotFound):
            await users.fs("bob").listdir("/alice/photos")
        with pytest.raises(NotFound, match="not shared"):
            await users.fs("bob").listdir("/alice/carols")
        assert await users.fs("bob").listdir("/alice/real") == []
        listed = await sharing.shared(users.fs("bob"))
        assert [i.path for _, i in listed.with_me] == ["/alice/photos", "/alice/real"]

        for garbage in (b"\xff\x00", encode_caps(items)[:-3], b"\xa0"):
            await users.fs("alice").write_bytes("shared/bob/caps", garbage)
            with pytest.raises(Corrupted, match="shares with you"):
                await users.fs("bob").listdir("/alice")
            problems = (await sharing.shared(users.fs("bob"))).problems
            assert len(problems) == 1
            assert problems[0].startswith("alice: ")
        assert decode_caps(encode_caps([])) == []


async def test_remove_follower_revokes_what_was_shared(users: Users) -> None:
    with trio.fail_after(TIMEOUT):
        alice = users.fs("alice")
        await alice.mkdir("docs")
        await alice.write_file("docs/a.txt", io.BytesIO(b"a"))
        # Two chunks, the first of five fragments: each is opened and sealed again.
        big = bytes(range(256)) * (CHUNK_BYTES // 256) + b"tail"
        await alice.write_file("docs/big.bin", io.BytesIO(big))
        await befriend(users, "alice", "bob")
        item = await sharing.share(users.fs("alice"), "docs", "bob", write=True)
        assert await read_all(users.fs("bob"), "/alice/docs/a.txt") == b"a"
        assert await read_all(users.fs("bob"), "/alice/docs/big.bin") == big
        assert await social.remove_follower(users.fs("alice"), "bob") == []
        with pytest.raises(NotFound):
            await users.fs("alice").stat("shared/bob")
        route = users.sessions["alice"].route
        with pytest.raises((NotFound, Denied)):
            await users.fs("bob").contents_of(item.cap, route)
        assert await read_all(users.fs("alice"), "docs/a.txt") == b"a"
        assert await read_all(users.fs("alice"), "docs/big.bin") == big
        # No one writes it any more: it is back in alice's own writer, the old one dropped.
        assert (await users.fs("alice").capability("docs")).writer == users.sessions["alice"].owner


def count_puts(api: NodeApi) -> list[int]:
    """Every block.put of `api` from now on adds its count of blocks to the list returned."""
    counts: list[int] = []
    original = api.call

    async def call(method: str, args: dict[str, Any] | None = None) -> Any:
        if method == "block.put" and args is not None:
            counts.append(len(args["blocks"]))
        return await original(method, args)

    api.call = call  # type: ignore[method-assign]
    return counts


async def test_rotation_rewrites_only_the_subtree(users: Users) -> None:
    files, others = 10, 120
    with trio.fail_after(TIMEOUT):
        fs = users.fs("alice")
        await fs.mkdir("big")
        await fs.write_files("big", [(f"f{i}", opener(b"x" * i)) for i in range(files)])
        await fs.mkdir("other")
        await fs.write_files("other", [(f"g{i}", opener(b"y")) for i in range(others)])
        before = await users.fs("alice").capability("other/g0")
        old = await users.fs("alice").capability("big/f3")
        counts = count_puts(users.sessions["alice"].api)
        await users.fs("alice").rotate("big")
        # Every node of the subtree (one per file, one for the folder), the CHAMP nodes on
        # their paths, the parent folder and the root: O(subtree), not O(the user's space).
        assert files + 1 <= sum(counts) <= 3 * (files + 1) + 4 < others
        fs = users.fs("alice")
        assert await fs.capability("other/g0") == before
        new = await fs.capability("big/f3")
        assert (new.label, new.bat, new.read_key) != (old.label, old.bat, old.read_key)
        assert await read_all(fs, "big/f3") == b"xxx"
        assert [i.name for i in await fs.listdir("big")] == [f"f{i}" for i in range(files)]
        with pytest.raises((NotFound, Denied)):
            await users.fs("alice").read_capability(old, users.sessions["alice"].route, 100)


def opener(data: bytes) -> Any:
    return lambda: contextlib.nullcontext(io.BytesIO(data))


async def test_a_writable_share_inside_another(users: Users) -> None:
    """A sub-writer inside a sub-writer: made in one commit of three trees (the outer writer's,
    the owner's identity with the new proof, the new writer's). Revoking the outer item
    rotates the inner one too, into a fresh writer, and its sharee keeps writing."""
    with trio.fail_after(TIMEOUT):
        fs = users.fs("alice")
        await fs.mkdir("team/sub", parents=True)
        await fs.write_file("team/sub/a.txt", io.BytesIO(b"a"))
        await befriend(users, "alice", "bob")
        await befriend(users, "alice", "carol")
        outer = await sharing.share(users.fs("alice"), "team", "bob", write=True)
        inner = await sharing.share(users.fs("alice"), "team/sub", "carol", write=True)
        alice = users.sessions["alice"].owner
        assert len({outer.cap.writer, inner.cap.writer, alice}) == 3
        await users.fs("carol").write_file("/alice/team/sub/b.txt", io.BytesIO(b"from carol"))
        assert await read_all(users.fs("bob"), "/alice/team/sub/b.txt") == b"from carol"
        assert await read_all(users.fs("alice"), "team/sub/a.txt") == b"a"
        # bob's item had its writer capability opened by bob: its keys all change, and the
        # writable item inside it with them.
        bob_inner = await users.fs("bob").capability("/alice/team/sub")
        assert await sharing.unshare(users.fs("alice"), "team", "bob") == []
        route = users.sessions["alice"].route
        for old in (outer.cap, bob_inner, inner.cap):
            with pytest.raises((NotFound, Denied)):
                await users.fs("bob").contents_of(old, route)
        assert (await users.fs("alice").capability("team")).writer == alice
        now = await users.fs("alice").capability("team/sub")
        assert now.writer not in (inner.cap.writer, alice)
        await users.fs("carol").write_file("/alice/team/sub/c.txt", io.BytesIO(b"c"))
        assert await read_all(users.fs("alice"), "team/sub/c.txt") == b"c"
        assert await read_all(users.fs("alice"), "team/sub/b.txt") == b"from carol"
        ((_, item),) = (await sharing.shared(users.fs("carol"))).with_me
        assert item.cap == now


async def test_unsharing_an_item_moved_since(users: Users) -> None:
    """Nothing is at the shared path any more: the entry goes, and the caller is told that
    nothing was rotated there."""
    with trio.fail_after(TIMEOUT):
        await users.fs("alice").mkdir("photos")
        await befriend(users, "alice", "bob")
        await sharing.share(users.fs("alice"), "photos", "bob")
        await users.fs("alice").move("photos", "pics")
        assert await sharing.unshare(users.fs("alice"), "photos", "bob") == ["/alice/photos"]
        assert not (await sharing.shared(users.fs("alice"))).mine
        assert await users.fs("bob").listdir("/alice") == []


async def test_a_rotation_over_an_unreadable_entry_changes_nothing(
    fs: FileSystem, alice: Session
) -> None:
    ghost = Capability(alice.owner, alice.owner, *(crypto.random_bytes(32) for _ in range(4)))
    with trio.fail_after(TIMEOUT):
        await fs.mkdir("docs")
        await fs.write_file("docs/ok.txt", io.BytesIO(b"ok"))
        docs = await fs.capability("docs")
        found = await fs._find("")
        tree, first = await fs._writable(found)

        async def plant(blocks: Blocks, root: CID) -> CID:
            folder = await fs._read_dir(blocks, root, docs)
            folder.chunks[-1].entries.append(Entry.link("ghost", False, ghost, docs))
            return await fs._save_dir(blocks, root, folder, {0}, alice.mirror_id)

        await fs._commit(tree, first, plant)
        before = await sharing.filesystem(alice).capability("docs")
        with pytest.raises(Corrupted, match=r"cannot be read.*nothing was changed"):
            await sharing.filesystem(alice).rotate("docs")
        assert await sharing.filesystem(alice).capability("docs") == before
        with pytest.raises(Denied, match="owner"):
            await sharing.filesystem(alice).rotate("/bob/docs")
        with pytest.raises(Conflict, match="home"):
            await sharing.filesystem(alice).rotate("/alice")
        await FileSystem(alice).remove("docs/ghost")
        await sharing.filesystem(alice).rotate("docs")
        assert await read_all(sharing.filesystem(alice), "docs/ok.txt") == b"ok"


async def test_taking_write_access_back(users: Users) -> None:
    with trio.fail_after(TIMEOUT):
        await users.fs("alice").mkdir("docs")
        await befriend(users, "alice", "bob")
        writable = await sharing.share(users.fs("alice"), "docs", "bob", write=True)
        await users.fs("bob").write_file("/alice/docs/a.txt", io.BytesIO(b"a"))
        reading = await sharing.share(users.fs("alice"), "docs", "bob")
        assert not reading.writable
        assert reading.cap == (await users.fs("alice").capability("docs")).read_only()
        assert reading.cap.writer == users.sessions["alice"].owner  # nobody writes it now
        with pytest.raises(Denied, match="read-only"):
            await users.fs("bob").write_file("/alice/docs/b.txt", io.BytesIO(b"b"))
        with pytest.raises((NotFound, Denied)):
            await users.fs("bob").contents_of(writable.cap, users.sessions["alice"].route)
        assert await read_all(users.fs("bob"), "/alice/docs/a.txt") == b"a"
