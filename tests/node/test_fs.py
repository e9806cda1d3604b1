"""The encrypted filesystem against a real in-process node: round trips, seeking, privacy,
space accounting and large directories."""

from __future__ import annotations

import contextlib
import functools
import io
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.client import (
    Contents,
    FileSystem,
    NodeApi,
    Session,
    get_file,
    get_tree,
    login,
    signup,
    tree_size,
)
from node.client._blocks import Blocks
from node.store import Space
from protocols import cbor, champ
from protocols.cid import CID
from protocols.cryptree import CHUNK_BYTES, build_node, payload_data, seal_data
from protocols.errors import Conflict, Corrupted, NotFound, PyrgosError
from tests.node.conftest import PASSWORD, RunningNode

MiB = 1024 * 1024


async def read_all(fs: FileSystem, path: str, offset: int = 0, length: int | None = None) -> bytes:
    async with fs.read(path, offset, length) as pieces:
        return b"".join([piece async for piece in pieces])


@pytest.mark.parametrize(
    "size",
    [0, 1, 4095, 4096, 4097, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1, 3 * CHUNK_BYTES + 7],
)
async def test_file_round_trip(fs: FileSystem, size: int) -> None:
    data = os.urandom(size)
    with trio.fail_after(60):
        await fs.write_file("f.bin", io.BytesIO(data))
        assert await read_all(fs, "f.bin") == data
        assert (await fs.stat("f.bin")).size == size


async def test_random_offset_reads_equal_the_model(fs: FileSystem) -> None:
    data = os.urandom(3 * CHUNK_BYTES + 7)
    with trio.fail_after(60):
        await fs.write_file("big.bin", io.BytesIO(data))
    cases: list[tuple[int, int]] = []

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.integers(0, len(data) + 10), st.integers(0, 2 * CHUNK_BYTES))
    def collect(offset: int, length: int) -> None:
        cases.append((offset, length))

    collect()
    cases += [(CHUNK_BYTES - 3, 6), (len(data) - 1, 5), (0, len(data)), (1024 * 1024 - 1, 2)]
    with trio.fail_after(120):
        for offset, length in cases:
            assert await read_all(fs, "big.bin", offset, length) == data[offset : offset + length]


async def test_overwrite_replaces_the_file(fs: FileSystem) -> None:
    with trio.fail_after(30):
        await fs.write_file("a.txt", io.BytesIO(b"first version"))
        await fs.write_file("a.txt", io.BytesIO(b"second"))
        assert await read_all(fs, "a.txt") == b"second"
        assert [item.name for item in await fs.listdir()] == ["a.txt"]


async def test_mkdir_mv_rm(fs: FileSystem) -> None:
    with trio.fail_after(30):
        await fs.mkdir("a/b/c", parents=True)
        await fs.write_file("a/b/c/x.txt", io.BytesIO(b"x"))
        with pytest.raises(Conflict):
            await fs.mkdir("a")
        with pytest.raises(NotFound):
            await fs.mkdir("nope/child")
        await fs.move("a/b/c/x.txt", "a/y.txt")
        assert await read_all(fs, "a/y.txt") == b"x"
        await fs.move("a/b", "moved")
        assert [i.name for i in await fs.listdir("moved")] == ["c"]
        with pytest.raises(Conflict):
            await fs.move("a", "a/inside")
        with pytest.raises(Conflict):
            await fs.remove("a")
        await fs.remove("a/y.txt")
        await fs.remove("a")
        await fs.remove("moved", recursive=True)
        assert await fs.listdir() == []


async def test_second_device_sees_the_same_files(api: NodeApi, fs: FileSystem) -> None:
    with trio.fail_after(30):
        await fs.write_file("shared.txt", io.BytesIO(b"from device one"))
        other = FileSystem(await login(api, "alice", PASSWORD))
        assert await read_all(other, "/alice/shared.txt") == b"from device one"


async def test_seek_costs_the_same_at_any_offset(running_node: RunningNode, api: NodeApi) -> None:
    """Reading 4 KiB at the end of a 1 GiB file fetches as many blocks as at its start."""
    size = 1024 * MiB
    session = await signup(api, "seeker", PASSWORD)

    class Zeros(io.RawIOBase):
        def __init__(self) -> None:
            self.left = size

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            n = min(len(buffer), self.left)
            buffer[:n] = bytes(n)
            self.left -= n
            return n

    with trio.fail_after(300):
        await FileSystem(session).write_file("huge.bin", io.BufferedReader(Zeros(), CHUNK_BYTES))
    stats = running_node.service.stats
    counts = []
    for offset in (0, size - 4096):
        with trio.fail_after(60):
            reader = FileSystem(await login(api, "seeker", PASSWORD))
            before = Counter(stats)
            trips = reader.api.round_trips
            assert await read_all(reader, "huge.bin", offset, 4096) == bytes(4096)
            counts.append(
                (stats["blocks_served"] - before["blocks_served"],
                 stats["champ_lookups"] - before["champ_lookups"],
                 reader.api.round_trips - trips)
            )  # fmt: skip
    # The home directory's node, the file's node, one fragment; a CHAMP lookup whose path
    # the cache already holds (labels are random, so that is luck) costs no call.
    assert counts[0][0] == counts[1][0] <= 4
    assert all(lookups <= 2 and trips <= 7 for _, lookups, trips in counts)


async def home_tree(fs: FileSystem) -> tuple[Blocks, CID]:
    """The blocks of one read of the user's home tree, and its CHAMP root."""
    found = await fs._find("")
    return found.blocks, await found.trees.tree(found.cap.writer)


def champ_entries(block: bytes) -> int | None:
    """The entries of a CHAMP node ([datamap, nodemap, buckets, children]); None otherwise."""
    try:
        value = cbor.decode(block)
    except PyrgosError:
        return None
    if not (isinstance(value, list) and len(value) == 4 and isinstance(value[2], list)):
        return None
    if not all(isinstance(bitmap, bytes) and len(bitmap) == 4 for bitmap in value[:2]):
        return None
    return sum(len(bucket) for bucket in value[2])


async def test_blocks_do_not_reveal_sizes_or_kinds(running_node: RunningNode, api: NodeApi) -> None:
    async def footprint(user: str, action: str) -> tuple[Counter[int], int]:
        """The lengths of the blocks a user's first entry adds, and its CHAMP's entries. A
        CHAMP node's length depends on whether random labels share a slot (a bucket of two
        pairs is a byte shorter than two buckets): chance, not size or kind, so it is
        compared by what it holds."""
        before = {key for key, _ in running_node.store.items(Space.BLOCKS)}
        fs = FileSystem(await signup(api, user, PASSWORD))
        if action == "dir":
            await fs.mkdir("n")
        else:
            await fs.write_file("n", io.BytesIO(os.urandom(int(action))))
        added = [v for k, v in running_node.store.items(Space.BLOCKS) if k not in before]
        champ_nodes = [n for n in map(champ_entries, added) if n is not None]
        other = [len(block) for block in added if champ_entries(block) is None]
        return Counter(other), sum(champ_nodes)

    with trio.fail_after(60):
        one = await footprint("small", "1")
        four_thousand = await footprint("medium", "4000")
        directory = await footprint("folder", "dir")
    assert one == four_thousand
    assert one == directory


async def test_the_database_never_holds_names_or_plaintext(
    running_node: RunningNode, fs: FileSystem
) -> None:
    marker = b"PLAINTEXT-MARKER-7f3a9c"
    name = "secret-file-name-QX81"
    with trio.fail_after(30):
        await fs.mkdir("folder-name-ZT42")
        await fs.write_file(f"folder-name-ZT42/{name}", io.BytesIO(marker * 1000))
        await fs.write_file("tiny", io.BytesIO(marker))
    running_node.store.compact()
    stored = b"".join(
        path.read_bytes() for path in running_node.store.path.iterdir() if path.is_file()
    )
    for needle in (marker, name.encode(), b"folder-name-ZT42", b"tiny", PASSWORD.encode()):
        assert needle not in stored


async def test_usage_returns_after_remove_and_gc(running_node: RunningNode, fs: FileSystem) -> None:
    store = running_node.store
    with trio.fail_after(120):
        start, _ = await fs.usage()
        await fs.write_file("twenty.bin", io.BytesIO(os.urandom(20 * MiB)))
        used, _ = await fs.usage()
        assert used >= start + 20 * MiB
        store.compact()
        full_disk = store.disk_bytes()
        await fs.remove("twenty.bin")
        await running_node.service.collect_garbage()
        end, _ = await fs.usage()
    assert abs(end - start) <= 64 * 1024
    assert store.disk_bytes() < full_disk - 18 * MiB


async def test_directory_of_ten_thousand_entries(running_node: RunningNode, fs: FileSystem) -> None:
    names = [f"file-{i:05d}.txt" for i in range(10_000)]
    files = [(name, lambda: io.BytesIO(b"")) for name in names]
    with trio.fail_after(300):
        await fs.mkdir("many")
        await fs.write_files("/alice/many", files)  # type: ignore[arg-type]
        trips = fs.api.round_trips
        listing = await fs.listdir("many")
        assert [item.name for item in listing] == names
        assert fs.api.round_trips - trips < 80  # a few requests per chunk of 500, not per entry
        await fs.write_file("many/one-more", io.BytesIO(b"1"))
        await fs.remove("many/file-00000.txt")
        names = sorted([*names[1:], "one-more"])
        assert [item.name for item in await fs.listdir("many")] == names


async def test_directory_chunks_hold_at_most_500_entries(fs: FileSystem) -> None:
    files = [(f"f{i:04d}", lambda: io.BytesIO(b"")) for i in range(1201)]
    with trio.fail_after(120):
        await fs.write_files("/alice", files)  # type: ignore[arg-type]
        blocks, root = await home_tree(fs)
        home = await fs._read_dir(blocks, root, fs.require_session().home)
    assert [len(chunk.entries) for chunk in home.chunks] == [500, 500, 201]
    assert home.props.chunks == 3
    assert home.props.size == 1201


# -- downloads never write through a planted link ----------------------------------------------


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under root, by relative path."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def no_partial_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.startswith(".pyrgos-part")]


async def test_get_ignores_a_link_planted_at_the_old_temporary_name(
    fs: FileSystem, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / ".report.txt.pyrgos-part").symlink_to(outside)
    with trio.fail_after(30):
        await fs.write_file("report.txt", io.BytesIO(b"downloaded"))
        await get_file(fs, "report.txt", downloads / "report.txt", None, 10)
    assert outside.read_bytes() == b"precious"
    assert (downloads / "report.txt").read_bytes() == b"downloaded"
    assert no_partial_files(downloads)


async def test_get_replaces_a_link_at_the_final_name_instead_of_writing_through_it(
    fs: FileSystem, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    downloads = tmp_path / "downloads"
    (downloads / "photos").mkdir(parents=True)
    (downloads / "report.txt").symlink_to(outside)
    (downloads / "photos" / "a.jpg").symlink_to(outside)
    with trio.fail_after(30):
        await fs.write_file("report.txt", io.BytesIO(b"downloaded"))
        await fs.mkdir("photos")
        await fs.write_file("photos/a.jpg", io.BytesIO(b"jpeg"))
        await get_file(fs, "report.txt", downloads / "report.txt", None)
        await get_tree(fs, "photos", downloads / "photos", None)
    assert outside.read_bytes() == b"precious"
    for path, data in (
        (downloads / "report.txt", b"downloaded"),
        (downloads / "photos/a.jpg", b"jpeg"),
    ):
        assert not path.is_symlink()
        assert path.read_bytes() == data
    assert no_partial_files(downloads)


async def test_folder_download_refuses_a_planted_link_as_a_sub_folder(
    fs: FileSystem, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    downloads = tmp_path / "photos"
    downloads.mkdir()
    (downloads / "2024").symlink_to(outside)
    with trio.fail_after(30):
        await fs.mkdir("photos/2024", parents=True)
        await fs.write_file("photos/2024/a.jpg", io.BytesIO(b"jpeg"))
        with pytest.raises(Conflict, match="symbolic link"):
            await get_tree(fs, "photos", downloads, None)
        (downloads / "2024").unlink()
        (downloads / "2024").write_bytes(b"a file")
        with pytest.raises(Conflict, match="not a folder"):
            await get_tree(fs, "photos", downloads, None)
    assert list(outside.iterdir()) == []
    assert no_partial_files(downloads)


async def test_a_failed_or_cancelled_download_leaves_no_temporary_file(
    fs: FileSystem, tmp_path: Path
) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with trio.fail_after(30):
        await fs.write_file("big.bin", io.BytesIO(os.urandom(3 * MiB)))
        with pytest.raises(NotFound):
            await get_file(fs, "missing.bin", downloads / "missing.bin", None)

        def interrupt(_: int) -> None:
            (part,) = downloads.iterdir()
            assert part.name.startswith(".pyrgos-part-")
            assert part.stat().st_mode & 0o777 == 0o600  # private until complete
            raise KeyboardInterrupt

        with pytest.raises(BaseExceptionGroup) as caught:  # Ctrl-C, through trio's task groups
            await get_file(fs, "big.bin", downloads / "big.bin", interrupt)
        assert caught.group_contains(KeyboardInterrupt)
        with trio.CancelScope() as scope:
            await get_file(fs, "big.bin", downloads / "big.bin", lambda _: scope.cancel())
        assert scope.cancelled_caught
    assert list(downloads.iterdir()) == []


# -- one bad directory entry never hides the rest ----------------------------------------------


async def rewrite_dir(fs: FileSystem, path: str, edit: Callable[[list[Any]], object]) -> None:
    """Rewrite chunk 0 of the directory `path` with its CBOR items edited, as another writer
    or damage could: sealed with the cryptree primitives, past every check of the client."""
    found = await fs._find(path)
    writer, first = await fs._writable(found)
    mirror_id = fs.require_session().mirror_id

    async def change(blocks: Blocks, tree: CID) -> CID:
        directory = await fs._dir_at(blocks, tree, found.base, found.names)
        chunk = directory.chunks[0]
        plain = cbor.encode(edit([entry.to_cbor() for entry in chunk.entries]))
        payload = seal_data(directory.cap, 0, chunk.keys, True, plain, mirror_id)
        blocks.stage_fragments(payload)
        node = build_node(
            directory.cap, 0, chunk.keys, True, chunk.props, payload_data(payload), mirror_id
        )
        return await champ.put(
            blocks, tree, directory.cap.label, chunk.node, await blocks.put(node)
        )

    await fs._commit(writer, first, change)


def plant_bad_entries(items: list[Any]) -> list[Any]:
    """Damage a directory holding a.jpg, garbled, wrong-bat and bad-link (files) in every way
    an entry can be bad: four whose nodes cannot be read, three that do not decode."""
    by_name = {item[0]: item for item in items}
    by_name["garbled"][4] = os.urandom(32)  # its node fails to decrypt
    by_name["wrong-bat"][3] = os.urandom(32)  # the node refuses the read
    by_name["bad-link"][5] = b"not a sealed key"  # its write key fails to open
    missing = [*by_name["a.jpg"]]
    missing[0], missing[2] = "missing", os.urandom(32)  # no node at its label
    template = by_name["a.jpg"]
    malformed = ["short", False, b"short", *template[3:]]
    return [*items, missing, ["..", *template[1:]], malformed, 42]


def holding(data: bytes) -> Callable[[], contextlib.AbstractContextManager[BinaryIO]]:
    return lambda: contextlib.nullcontext(io.BytesIO(data))


async def make_damaged(fs: FileSystem, path: str) -> None:
    await fs.mkdir(f"{path}/sub", parents=True)
    names = ("a.jpg", "garbled", "wrong-bat", "bad-link")
    await fs.write_files(path, [(name, holding(name.encode())) for name in names])
    await fs.write_file(f"{path}/sub/c.jpg", io.BytesIO(b"c"))
    await rewrite_dir(fs, path, plant_bad_entries)


async def test_bad_entries_are_skipped_reported_and_removed(fs: FileSystem, tmp_path: Path) -> None:
    with trio.fail_after(60):
        await make_damaged(fs, "photos")
        short = await fs.contents("photos")
        assert [i.name for i in short.items] == [
            "a.jpg", "bad-link", "garbled", "missing", "sub", "wrong-bat"
        ]  # fmt: skip
        assert short.unreadable == 3  # a short listing reads no child: what fails to decode
        full = await fs.contents("photos", long=True)
        assert [i.name for i in full.items] == ["a.jpg", "sub"]
        assert full.unreadable == 7
        assert await fs.listdir("photos", long=True) == full.items
        assert await read_all(fs, "photos/a.jpg") == b"a.jpg"
        assert await read_all(fs, "photos/sub/c.jpg") == b"c"
        assert await tree_size(fs, "photos") == 6

        assert await get_tree(fs, "photos", tmp_path / "out", None) == 7
        assert tree(tmp_path / "out") == {"a.jpg": b"a.jpg", "sub": None, "sub/c.jpg": b"c"}

        # A write elsewhere in the directory carries the bad entries over: nothing is lost.
        await fs.write_file("photos/d.jpg", io.BytesIO(b"d"))
        assert (await fs.contents("photos", long=True)).unreadable == 7

        blocks, root = await home_tree(fs)
        directory = await fs._dir_at(blocks, root, fs.require_session().home, ["photos"])
        garbled = next(e for e in directory.entries() if e.name == "garbled")
        assert (await blocks.lookup(root, [garbled.label]))[garbled.label] is not None

        assert await fs.remove_unreadable("photos") == 7
        after = await fs.contents("photos", long=True)
        assert [i.name for i in after.items] == ["a.jpg", "d.jpg", "sub"]
        assert after.unreadable == 0
        assert await fs.remove_unreadable("photos") == 0
        blocks, root = await home_tree(fs)
        assert (await blocks.lookup(root, [garbled.label]))[garbled.label] is None


async def test_rm_removes_bad_entries_by_name_and_with_their_directory(fs: FileSystem) -> None:
    with trio.fail_after(60):
        await make_damaged(fs, "d")
        for name in ("missing", "garbled", "wrong-bat", "bad-link"):
            await fs.remove(f"d/{name}")
        assert (await fs.contents("d", long=True)).unreadable == 3

        await make_damaged(fs, "e/inner")
        await fs.mkdir("broken")

        def garble_broken(items: list[Any]) -> list[Any]:
            for item in items:
                if item[0] == "broken":
                    item[4] = os.urandom(32)
            return items

        await rewrite_dir(fs, "/alice", garble_broken)
        with pytest.raises(Conflict, match="cannot be read"):
            await fs.remove("broken")
        await fs.remove("broken", recursive=True)
        await fs.remove("e", recursive=True)
        await fs.remove("d", recursive=True)
        assert await fs.contents("", long=True) == Contents([], 0)


async def test_a_whole_malformed_directory_chunk_is_still_an_error(
    fs: FileSystem, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        await fs.mkdir("d")
        await fs.write_file("d/a.jpg", io.BytesIO(b"a"))
        await rewrite_dir(fs, "d", lambda items: {"entries": items})
        for listing in (fs.contents("d"), get_tree(fs, "d", tmp_path / "out", None)):
            with pytest.raises(Corrupted, match="directory chunk is malformed"):
                await listing
        await fs.remove("d", recursive=True)
        assert await fs.listdir() == []


async def test_a_put_reads_each_block_once(api: NodeApi, alice: Session) -> None:
    """One command reads the root pointer once and each node on the path once: the CHAMP
    lookups, the directory nodes and the WriterData it read before the upload serve its
    commit too. (Before the shared cache, this put cost 20 round trips: the root and the
    path were read three times.)"""
    with trio.fail_after(30):
        await FileSystem(alice).mkdir("/alice/a/b", parents=True)
        fs = FileSystem(alice)
        await api.node_id()  # asked once per client, whatever it does
        trips = api.round_trips
        await fs.write_file("/alice/a/b/x.txt", io.BytesIO(b"x"))
        count = api.round_trips - trips
        assert await read_all(fs, "/alice/a/b/x.txt") == b"x"
    # pointer.get, the WriterData, one CHAMP lookup (a small CHAMP is one node, cached after
    # the first), the nodes of /alice, a and b, the upload's put, the commit's put, pointer.cas
    assert count == 9
    assert count < 20


async def test_a_folder_download_reads_its_directory_once_not_once_a_file(
    fs: FileSystem, tmp_path: Path
) -> None:
    """Each file of a folder is reached from the directory already read: walking to it from
    the root again (a pointer read and the directory's decryption each time) made a folder of
    n files cost n times its directory."""
    trips = []
    with trio.fail_after(60):
        for count in (12, 24):
            await fs.mkdir(f"f{count}")
            files = [(f"x{i:02d}", functools.partial(io.BytesIO, b"%d" % i)) for i in range(count)]
            await fs.write_files(f"f{count}", files)
            before = fs.api.round_trips
            assert await get_tree(fs, f"f{count}", tmp_path / f"out{count}", None) == 0
            trips.append(fs.api.round_trips - before)
            for i in range(count):
                assert (tmp_path / f"out{count}" / f"x{i:02d}").read_bytes() == b"%d" % i
    # A small file is one node (its data inline): about one call each, and nothing more per
    # file for the directory (the walk from the root cost two calls a file).
    assert trips[1] - trips[0] <= 12 * 3 // 2
