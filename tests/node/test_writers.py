"""The client seam: writer trees (a subtree with a writer of its own), resolvers, reading and
writing without the user's own home, small state files and hidden names."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest
import trio

import node.client._fs
from node.client import (
    FileSystem,
    HomeResolver,
    NodeApi,
    Resolved,
    Resolvers,
    Route,
    Session,
    TreeUpdate,
    WriterTree,
    commit_trees,
    get_tree,
    tree_size,
)
from node.client._blocks import Blocks, stage_dir_chunk
from node.client._resolve import Listing
from node.store import Space
from protocols import champ, crypto
from protocols.cid import CID
from protocols.crypto import SigningKey
from protocols.cryptree import Capability, Entry, KeyBlock, Properties, seal_writer_secret
from protocols.errors import Conflict, Denied, MalformedInput, NotFound, TooLarge
from protocols.pointers import PointerUpdate
from protocols.writerdata import WriterData
from tests.node.conftest import RunningNode

TIMEOUT = 30


async def read_all(fs: FileSystem, path: str) -> bytes:
    async with fs.read(path) as pieces:
        return b"".join([piece async for piece in pieces])


def pointer_of(running_node: RunningNode, writer: CID) -> PointerUpdate:
    raw = running_node.store.get(Space.POINTERS, writer.raw)
    assert raw is not None
    return PointerUpdate.decode(raw)


async def make_writer_dir(fs: FileSystem, running_node: RunningNode, name: str) -> SigningKey:
    """A directory `name` in the home with a writer of its own, made in one commit of two
    trees (the owner's, relinked; the new writer's first root). The node's registration of
    the writer (from an owner proof) is done here directly in its store."""
    session = fs.require_session()
    writer = SigningKey.generate()
    running_node.store.put(Space.WRITERS, writer.public.key_hash().raw, session.owner.raw)
    found = await fs._find("")
    owner_tree, owner_root = await fs._writable(found)
    blocks = Blocks(fs.api, session.route, fs.cache)
    home = session.home
    cap = Capability(
        session.owner,
        writer.public.key_hash(),
        crypto.random_bytes(32),
        crypto.random_bytes(32),
        crypto.random_key(),
        crypto.random_key(),
    )
    assert cap.write_key is not None
    keys = KeyBlock(crypto.random_key(), seal_writer_secret(cap.write_key, cap.label, writer.seed))
    stamp = int(time.time() * 1000)
    props = Properties(name, True, 0, stamp, stamp, parent=home.label)
    sub_tree = await stage_dir_chunk(
        blocks, champ.EMPTY_ROOT, cap, 0, keys, props, [], None, session.mirror_id
    )
    home_dir = await fs._read_dir(blocks, owner_root.data.tree, home)
    home_dir.chunks[-1].entries.append(Entry.link(name, True, cap, home))
    home_tree = await fs._save_dir(
        blocks, owner_root.data.tree, home_dir, {len(home_dir.chunks) - 1}, session.mirror_id
    )
    sub = WriterTree(cap.writer, session.route, writer, session.mirror_id)
    await commit_trees(
        fs.api,
        blocks,
        [
            TreeUpdate(owner_tree, owner_root, home_tree),
            TreeUpdate(sub, None, sub_tree, WriterData(controller=cap.writer, tree=sub_tree)),
        ],
    )
    return writer


class FixedResolver:
    """Every path of one username starts at one capability (as a share or link would)."""

    def __init__(self, username: str, cap: Capability, route: Route) -> None:
        self.username, self.cap, self.route = username, cap, route

    async def resolve(self, username: str, names: list[str]) -> Resolved:
        if username != self.username:
            raise NotFound(f"/{username} is not shared with you")
        return Resolved(self.cap, self.route, names)

    async def list_top(self, username: str) -> list[Listing] | None:
        if username != self.username:
            raise NotFound(f"/{username} is not shared with you")
        return None


async def test_a_subtree_with_its_own_writer(
    running_node: RunningNode, alice: Session, fs: FileSystem
) -> None:
    with trio.fail_after(TIMEOUT):
        key = (await make_writer_dir(fs, running_node, "team")).public.key_hash()
        owner_before = pointer_of(running_node, alice.owner)
        sub_before = pointer_of(running_node, key)
        assert sub_before.sequence == 1

        # Writes inside it commit the writer's tree only, signed by the writer's key.
        fs = FileSystem(alice)
        await fs.mkdir("/alice/team/docs")
        await fs.write_file("/alice/team/docs/a.txt", io.BytesIO(b"hello"))
        assert pointer_of(running_node, alice.owner) == owner_before
        assert pointer_of(running_node, key).sequence == 3

        # Reads cross into it from the home; long listings find its node in its tree.
        fs = FileSystem(alice)
        assert await read_all(fs, "team/docs/a.txt") == b"hello"
        listing = await fs.listdir("", long=True)
        assert [(i.name, i.is_dir) for i in listing] == [("team", True)]
        assert listing[0].props is not None
        assert listing[0].props.name == "team"
        assert (await fs.stat("team")).is_dir
        assert (await fs.capability("team")).writer == key

        # Moves stay within one writer's tree; crossing is refused, nothing changes.
        await fs.write_file("b.txt", io.BytesIO(b"b"))
        with pytest.raises(Conflict, match="writer"):
            await FileSystem(alice).move("b.txt", "team/docs/b.txt")
        with pytest.raises(Conflict, match="writer"):
            await FileSystem(alice).move("team/docs/a.txt", "a.txt")
        with pytest.raises(Conflict, match="writer"):
            await FileSystem(alice).move("team", "team2")
        await FileSystem(alice).move("team/docs/a.txt", "team/a2.txt")
        fs = FileSystem(alice)
        assert await read_all(fs, "team/a2.txt") == b"hello"
        await fs.remove("team/docs")
        assert await FileSystem(alice).listdir("team") == [Listing("a2.txt", False)]

        # Removing it unlinks it from the home (its writer's tree stays as it is).
        await FileSystem(alice).remove("team", recursive=True)
        assert await FileSystem(alice).listdir("") == [Listing("b.txt", False)]


async def test_a_capability_read_through_a_resolver_without_a_session(
    running_node: RunningNode, alice: Session, fs: FileSystem, api: NodeApi
) -> None:
    with trio.fail_after(TIMEOUT):
        await make_writer_dir(fs, running_node, "team")
        fs = FileSystem(alice)
        await fs.write_file("team/a.txt", io.BytesIO(b"shared"))
        await fs.write_file("mine.txt", io.BytesIO(b"mine"))
        cap = await fs.capability("team")
        assert cap.writable
        route = alice.route

        # Anyone holding the read-only capability reads it, with no login at all.
        anonymous = FileSystem(api, FixedResolver("alice", cap.read_only(), route))
        assert anonymous.session is None
        assert await anonymous.listdir("/alice") == [Listing("a.txt", False)]
        assert await read_all(anonymous, "/alice/a.txt") == b"shared"
        assert (await anonymous.contents_of(cap.read_only(), route)).items == [
            Listing("a.txt", False)
        ]
        item = await anonymous.open_capability(cap.read_only(), route)
        assert (item.name, item.is_dir) == ("team", True)
        file_cap = await anonymous.capability("/alice/a.txt")
        assert not file_cap.writable
        assert await anonymous.read_capability(file_cap, route, 100) == b"shared"
        assert (await anonymous.open_capability(file_cap, route)).name == "a.txt"
        with pytest.raises(NotFound, match="not shared"):
            await anonymous.listdir("/bob")
        with pytest.raises(Denied, match="login"):
            await anonymous.listdir("relative")
        with pytest.raises(Denied, match="read-only"):
            await anonymous.write_file("/alice/b.txt", io.BytesIO(b"b"))

        # The owner with only the read key cannot write; with the write key it can.
        reader = FileSystem(api, FixedResolver("alice", cap.read_only(), route), alice)
        with pytest.raises(Denied, match="read-only"):
            await reader.write_file("/alice/b.txt", io.BytesIO(b"b"))
        writer = FileSystem(api, FixedResolver("alice", cap, route), alice)
        await writer.write_file("/alice/b.txt", io.BytesIO(b"b"))
        assert await read_all(FileSystem(alice), "team/b.txt") == b"b"
        assert [i.name for i in await FileSystem(alice).listdir("")] == ["mine.txt", "team"]


async def test_a_forged_capability_reads_nothing(alice: Session, api: NodeApi) -> None:
    forged = Capability(alice.owner, alice.owner, *(crypto.random_bytes(32) for _ in range(3)))
    with trio.fail_after(TIMEOUT):
        with pytest.raises(NotFound):
            await FileSystem(alice).open_capability(forged, alice.route)
        other = SigningKey.generate().public.key_hash()
        with pytest.raises(NotFound):
            await FileSystem(alice).open_capability(
                Capability(alice.owner, other, *(crypto.random_bytes(32) for _ in range(3))),
                alice.route,
            )


async def test_small_state_files_and_hidden_names(
    fs: FileSystem, alice: Session, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        await fs.mkdir(".pyrgos")
        await fs.write_bytes("/alice/.pyrgos/social", b"state-1")
        await fs.write_bytes("/alice/.pyrgos/social", b"state-2")  # replaced whole
        await fs.write_file("visible.txt", io.BytesIO(b"v"))
        fs = FileSystem(alice)
        assert await fs.read_bytes("/alice/.pyrgos/social", 100) == b"state-2"
        with pytest.raises(TooLarge):
            await fs.read_bytes("/alice/.pyrgos/social", 3)
        with pytest.raises(Conflict):
            await fs.read_bytes(".pyrgos", 100)
        assert [i.name for i in await fs.listdir("")] == ["visible.txt"]
        assert [i.name for i in await fs.listdir("", all=True)] == [".pyrgos", "visible.txt"]
        assert [i.name for i in await fs.listdir(".pyrgos")] == ["social"]
        assert (await fs.contents("", long=True, all=True)).unreadable == 0
        # A download keeps hidden names: only listings leave them out.
        assert await tree_size(fs, "") == len(b"state-2v")
        assert await get_tree(fs, "", tmp_path / "out", None) == 0
        assert (tmp_path / "out" / ".pyrgos" / "social").read_bytes() == b"state-2"


async def test_a_filesystem_needs_a_session_or_a_resolver(api: NodeApi) -> None:
    with pytest.raises(ValueError, match="resolver"):
        FileSystem(api)


def test_an_entry_names_its_writer_only_when_it_differs() -> None:
    owner = SigningKey.generate().public.key_hash()
    other = SigningKey.generate().public.key_hash()
    keys = [crypto.random_bytes(32) for _ in range(4)]
    parent = Capability(owner, owner, *keys[:3], keys[3])
    child = Capability(owner, owner, *(crypto.random_bytes(32) for _ in range(4)))
    same = Entry.link("a", True, child, parent)
    assert len(same.to_cbor()) == 6
    assert same.writer is None
    assert Entry.from_cbor(same.to_cbor()) == same
    assert same.capability(parent) == child
    own = Capability(owner, other, *(crypto.random_bytes(32) for _ in range(4)))
    entry = Entry.link("b", False, own, parent)
    assert len(entry.to_cbor()) == 7
    assert entry.writer == other
    assert Entry.from_cbor(entry.to_cbor()) == entry
    assert entry.capability(parent) == own
    assert entry.renamed("c").writer == other
    bad = [*entry.to_cbor()[:6], b"not a key hash"]
    with pytest.raises(MalformedInput):
        Entry.from_cbor(bad)
    with pytest.raises(MalformedInput):
        Entry.from_cbor([*entry.to_cbor(), None])


async def test_a_commit_that_loses_its_race_rereads_only_what_changed(
    alice: Session, api: NodeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(TIMEOUT):
        await FileSystem(alice).mkdir("a/b", parents=True)
        real = node.client._fs.commit_trees
        attempts: list[int] = []
        other_trips = 0

        async def racing(*args: Any, **kwargs: Any) -> None:
            nonlocal other_trips
            if other_trips == 0:  # another device writes first: this commit goes stale
                other_trips = -1
                before = api.round_trips
                await FileSystem(alice).write_file("a/other.txt", io.BytesIO(b"o"))
                other_trips = api.round_trips - before
                attempts.append(before)
            elif other_trips > 0:
                attempts.append(api.round_trips)
            await real(*args, **kwargs)

        monkeypatch.setattr(node.client._fs, "commit_trees", racing)
        fs = FileSystem(alice)
        await fs.write_file("a/b/x.txt", io.BytesIO(b"x"))
        assert len(attempts) == 2
        # The stale attempt's put and pointer.cas, then the retry's reads: the pointer, the new
        # WriterData, one CHAMP lookup and the one directory node that changed (a; /alice and
        # b are unchanged and cached). The write it lost to is counted apart.
        assert attempts[1] - attempts[0] - other_trips == 2 + 4
        monkeypatch.setattr(node.client._fs, "commit_trees", real)
        names = [i.name for i in await FileSystem(alice).listdir("a/b")]
        assert names == ["x.txt"]


async def test_resolvers_are_asked_in_order(alice: Session, api: NodeApi) -> None:
    with trio.fail_after(TIMEOUT):
        await FileSystem(alice).write_file("a.txt", io.BytesIO(b"a"))
        cap = await FileSystem(alice).capability("/alice")
        both = Resolvers([HomeResolver(alice), FixedResolver("bob", cap.read_only(), alice.route)])
        fs = FileSystem(api, both, alice)
        assert await fs.listdir("/alice") == [Listing("a.txt", False)]
        assert await fs.listdir("/bob") == [Listing("a.txt", False)]
        assert await fs.listdir("") == [Listing("a.txt", False)]
        with pytest.raises(NotFound, match="not this user's home"):
            await fs.listdir("/carol")  # the first source's answer
        with pytest.raises(ValueError, match="resolver"):
            Resolvers([])


async def test_an_entry_naming_a_writer_without_a_tree_is_unreadable(
    fs: FileSystem, alice: Session
) -> None:
    """A hostile or damaged entry may name any writer: its item cannot be read, the rest can."""
    stranger = SigningKey.generate().public.key_hash()
    ghost = Capability(alice.owner, stranger, *(crypto.random_bytes(32) for _ in range(4)))
    with trio.fail_after(TIMEOUT):
        await fs.write_file("ok.txt", io.BytesIO(b"ok"))
        found = await fs._find("")
        tree, first = await fs._writable(found)

        async def plant(blocks: Blocks, root: CID) -> CID:
            home = await fs._read_dir(blocks, root, alice.home)
            home.chunks[-1].entries.append(Entry.link("ghost", False, ghost, alice.home))
            last = {len(home.chunks) - 1}
            return await fs._save_dir(blocks, root, home, last, alice.mirror_id)

        await fs._commit(tree, first, plant)
        fs = FileSystem(alice)
        assert [i.name for i in await fs.listdir("")] == ["ghost", "ok.txt"]
        contents = await fs.contents("", long=True)
        assert [i.name for i in contents.items] == ["ok.txt"]
        assert contents.unreadable == 1
        with pytest.raises(NotFound, match="no root"):
            await read_all(fs, "ghost")
        with pytest.raises(Conflict, match="writer of its own"):
            await fs.write_file("ghost", io.BytesIO(b"x"))  # never replaced unseen
        assert await fs.remove_unreadable("") == 0  # another writer's entries are left alone
        await fs.remove("ghost")  # unlinked by name
        assert [i.name for i in await FileSystem(alice).listdir("")] == ["ok.txt"]


async def test_mkdir_over_a_file_is_a_conflict(fs: FileSystem) -> None:
    with trio.fail_after(TIMEOUT):
        await fs.write_file("f", io.BytesIO(b"f"))
        with pytest.raises(Conflict, match="not a directory: f"):
            await fs.mkdir("f/g/h", parents=True)
        with pytest.raises(Conflict, match="not a directory: f"):
            await fs.mkdir("f/g")
        with pytest.raises(Conflict, match="already exists"):
            await fs.mkdir("f")
        with pytest.raises(Conflict, match="not a directory: f"):
            await fs.mkdir("f", parents=True)
        with pytest.raises(NotFound, match="no such directory: x"):
            await fs.mkdir("x/y")
        await fs.mkdir("x/y", parents=True)
        await fs.mkdir("x/y", parents=True)  # exists: nothing to do
        assert [i.name for i in await fs.listdir("x")] == ["y"]
