"""Secret links and publishing from the client's side, across two in-process nodes: the owner
homed on one, the reader (without an account) going through the other, which forwards
`link.get` and relays blocks to the owner's home."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from node.client import FileSystem, NodeApi, Session, get_tree, links, sharing, signup
from node.client._links import (
    PublicResolver,
    ReadingResolver,
    claim_of,
    link_filesystem,
    open_link,
)
from node.net import serve_api
from node.server import NodeService
from node.store import Space, Store
from protocols import links as link_format
from protocols.crypto import SigningKey
from protocols.errors import AuthFailed, Conflict, Denied, MalformedInput, NotFound
from simulations.swarm import LocalNetwork, new_node
from tests.node.conftest import PASSWORD

TIMEOUT = 30
SECRET = b"the contents of a linked file\n"
LINK_PASSWORD = "open sesame"


@dataclass
class Pair:
    home: NodeService
    other: NodeService
    home_url: str
    other_url: str


@pytest.fixture
async def pair(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Pair]:
    swarm = LocalNetwork()
    home = new_node(Store(tmp_path / "home"))
    other = new_node(Store(tmp_path / "other"), pki_node=home.settings.node_id)
    for service in (home, other):
        swarm.add(service)
    home_url = await nursery.start(serve_api, home, "127.0.0.1", 0)
    other_url = await nursery.start(serve_api, other, "127.0.0.1", 0)
    yield Pair(home, other, home_url, other_url)
    nursery.cancel_scope.cancel()


@pytest.fixture
async def owner(pair: Pair) -> AsyncIterator[FileSystem]:
    async with NodeApi(pair.home_url) as api:
        session: Session = await signup(api, "alice", PASSWORD)
        fs = FileSystem(session)
        await fs.mkdir("/alice/docs/sub", parents=True)
        await fs.write_bytes("/alice/docs/a.txt", SECRET)
        await fs.write_bytes("/alice/docs/sub/b.txt", b"below")
        yield fs


@pytest.fixture
async def reader(pair: Pair) -> AsyncIterator[NodeApi]:
    async with NodeApi(pair.other_url) as api:
        yield api


async def read_link(reader: NodeApi, url: str, password: str | None = None) -> bytes:
    fs = await link_filesystem(reader, url, password)
    return await fs.read_bytes("/link", 1024)


async def test_a_link_works_exactly_as_many_times_as_allowed(
    pair: Pair, owner: FileSystem, reader: NodeApi
) -> None:
    with trio.fail_after(TIMEOUT):
        url = await links.create_link(
            owner, "docs/a.txt", node_url=pair.other_url, password=LINK_PASSWORD,
            expires=3600, max_uses=2,
        )  # fmt: skip
        assert url.startswith(pair.other_url + "/secret/")
        (record,) = await links.list_links(owner)
        assert (record.path, record.max_uses, record.password) == ("/alice/docs/a.txt", 2, True)
        assert record.expiry is not None
        assert not record.writable
        # A wrong or missing password fails, and counts no use.
        with pytest.raises(AuthFailed, match="wrong link password"):
            await read_link(reader, url, "open sesame?")
        with pytest.raises(AuthFailed, match="needs a password"):
            await read_link(reader, url)
        for _ in range(2):
            assert await read_link(reader, url, LINK_PASSWORD) == SECRET
        with pytest.raises(Denied, match="used its 2 times"):
            await read_link(reader, url, LINK_PASSWORD)
    assert pair.other.stats["forwarded"] >= 3
    assert not list(pair.other.store.keys(Space.LINKS))  # uses are counted at the home only


async def test_a_link_past_its_expiry_fails_on_the_home_nodes_clock(
    pair: Pair, owner: FileSystem, reader: NodeApi
) -> None:
    with trio.fail_after(TIMEOUT):
        url = await links.create_link(owner, "/alice/docs/a.txt", node_url=pair.home_url,
                                      expires=60)  # fmt: skip
        assert await read_link(reader, url) == SECRET
        pair.home.clock = lambda: time.time() + 120
        with pytest.raises(Denied, match="expired"):
            await read_link(reader, url)


async def test_a_link_to_a_folder_reads_what_is_below_it(
    pair: Pair, owner: FileSystem, reader: NodeApi, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        url = await links.create_link(owner, "/alice/docs", node_url=pair.other_url)
        fs = await link_filesystem(reader, url)
        names = [(item.name, item.is_dir) for item in await fs.listdir("/link")]
        assert names == [("a.txt", False), ("sub", True)]
        assert await fs.read_bytes("/link/sub/b.txt", 100) == b"below"
        assert await get_tree(fs, "/link", tmp_path / "copy", None) == 0
    assert (tmp_path / "copy" / "a.txt").read_bytes() == SECRET
    assert (tmp_path / "copy" / "sub" / "b.txt").read_bytes() == b"below"


async def test_a_revoked_link_is_not_found(pair: Pair, owner: FileSystem, reader: NodeApi) -> None:
    rotated: list[str] = []

    async def rotate(fs: FileSystem, path: str) -> None:
        rotated.append(path)

    with trio.fail_after(TIMEOUT):
        url = await links.create_link(owner, "docs/a.txt", node_url=pair.other_url)
        kept = await links.create_link(owner, "docs/sub", node_url=pair.other_url)
        link_id = link_format.parse_url(url).id
        assert (await links.revoke_link(owner, link_id, rotate=rotate)) is not None
        assert rotated == ["/alice/docs/a.txt"]
        with pytest.raises(NotFound, match="no such link"):
            await read_link(reader, url)
        assert [r.id for r in await links.list_links(owner)] == [link_format.parse_url(kept).id]
        with pytest.raises(NotFound, match="no link with id"):
            await links.revoke_link(owner, link_id)
        with pytest.raises(MalformedInput, match="not a link id"):
            await links.revoke_link(owner, "nope")
        assert [i.name for i in await (await link_filesystem(reader, kept)).listdir("/link")]


async def test_tampered_urls_fail_clearly(pair: Pair, owner: FileSystem, reader: NodeApi) -> None:
    with trio.fail_after(TIMEOUT):
        url = await links.create_link(owner, "docs/a.txt", node_url=pair.other_url)
        parsed = link_format.parse_url(url)
        head, key = url.split("#")
        label_text = link_format.encode_b64(parsed.label)
        other_label = link_format.encode_b64(bytes(16))
        other_key = link_format.encode_b64(bytes(32))
        stranger = SigningKey.generate().public.key_hash().text
        bad: list[tuple[str, type[Exception], str]] = [
            (url.replace(label_text, label_text[:-1] + "*"), MalformedInput, "label"),
            (head + "#" + key[:-2], MalformedInput, "key"),
            (head, MalformedInput, "#KEY"),
            (url.replace("/secret/", "/secrets/"), MalformedInput, "/secret/OWNER/LABEL"),
            (url.replace(parsed.owner.text, "bafyfoo"), MalformedInput, "OWNER"),
            (url.replace(label_text, other_label), NotFound, "no such link"),
            (head + "#" + other_key, AuthFailed, "needs a password"),
            (url.replace(parsed.owner.text, stranger), NotFound, "no user"),
        ]
        for text, error, message in bad:
            with pytest.raises(error, match=message):
                await open_link(reader, text)
        assert await read_link(reader, url) == SECRET  # none of those used it up


async def test_link_limits_and_writable_links(pair: Pair, owner: FileSystem) -> None:
    with trio.fail_after(TIMEOUT):
        with pytest.raises(Conflict, match="no writer of its own"):
            await links.create_link(owner, "docs/a.txt", node_url=pair.home_url, writable=True)
        with pytest.raises(MalformedInput, match="uses"):
            await links.create_link(owner, "docs/a.txt", node_url=pair.home_url, max_uses=0)
        with pytest.raises(MalformedInput, match="3650 days"):
            await links.create_link(owner, "docs/a.txt", node_url=pair.home_url, expires=0)
        with pytest.raises(Denied, match="your own"):
            await links.create_link(owner, "/bob/x", node_url=pair.home_url)
        for private in ("/alice", "", ".pyrgos/links", "/alice/shared", "shared/bob/caps"):
            with pytest.raises(Denied, match="private state"):
                await links.create_link(owner, private, node_url=pair.home_url)
            with pytest.raises(Denied, match="private state"):
                await links.publish(owner, private)
        with pytest.raises(NotFound):
            await links.create_link(owner, "docs/none", node_url=pair.home_url)
        with pytest.raises(MalformedInput, match="http"):
            await links.create_link(owner, "docs/a.txt", node_url="ftp://node")
        assert await links.list_links(owner) == []


def test_durations() -> None:
    assert link_format.parse_duration("30m") == 1800
    assert link_format.parse_duration("12h") == 43200
    assert link_format.parse_duration("7d") == 7 * 86400
    for bad in ("", "7", "d", "7w", "-1d", "1.5h", "0m", "3651d", "٣d", "999999999d"):
        with pytest.raises(MalformedInput):
            link_format.parse_duration(bad)


async def test_published_items_are_read_anonymously_through_another_node(
    pair: Pair, owner: FileSystem, reader: NodeApi
) -> None:
    with trio.fail_after(TIMEOUT):
        await owner.mkdir("/alice/public/pics", parents=True)
        await owner.write_bytes("/alice/public/pics/x.txt", b"hello world")
        anonymous = FileSystem(reader, PublicResolver(reader))
        with pytest.raises(NotFound, match="publishes nothing"):
            await anonymous.read_bytes("/alice/public/pics/x.txt", 100)
        assert await links.publish(owner, "public") == "/alice/public"
        assert await links.publish(owner, "/alice/docs/a.txt") == "/alice/docs/a.txt"
        assert await links.publish(owner, "public") == "/alice/public"  # again: no change
        anonymous = FileSystem(reader, PublicResolver(reader))
        assert await anonymous.read_bytes("/alice/public/pics/x.txt", 100) == b"hello world"
        assert [i.name for i in await anonymous.listdir("/alice/public")] == ["pics"]
        assert await anonymous.read_bytes("/alice/docs/a.txt", 100) == SECRET
        for hidden in ("/alice/docs/sub/b.txt", "/alice/docs", "/alice", "/alice/x"):
            with pytest.raises(NotFound, match="not published"):
                await anonymous.listdir(hidden)
        with pytest.raises(NotFound, match="unknown user"):
            await anonymous.listdir("/nobody/public")
        with pytest.raises(Denied, match="read-only to you"):
            await anonymous.write_bytes("/alice/public/y", b"no")

        assert await links.unpublish(owner, "/alice/public") == "/alice/public"
        anonymous = FileSystem(reader, PublicResolver(reader))
        with pytest.raises(NotFound, match="not published"):
            await anonymous.read_bytes("/alice/public/pics/x.txt", 100)
        with pytest.raises(NotFound, match="is not published"):
            await links.unpublish(owner, "/alice/public")
        await links.unpublish(owner, "docs/a.txt")
        with pytest.raises(NotFound, match="publishes nothing"):
            await FileSystem(reader, PublicResolver(reader)).listdir("/alice/docs/a.txt")
        with pytest.raises(Denied, match="your own"):
            await links.publish(owner, "/bob/public")


async def test_claims_by_identity_are_checked(
    pair: Pair, owner: FileSystem, reader: NodeApi
) -> None:
    session = owner.require_session()
    with trio.fail_after(TIMEOUT):
        claim = await claim_of(reader, identity=session.owner)
        assert (claim.username, claim.home) == ("alice", pair.home.settings.node_id)
        with pytest.raises(NotFound, match="no user has this identity"):
            await claim_of(reader, identity=SigningKey.generate().public.key_hash())


async def test_a_logged_in_reader_sees_its_home_and_what_others_publish(
    pair: Pair, owner: FileSystem, reader: NodeApi
) -> None:
    with trio.fail_after(TIMEOUT):
        bob = await signup(reader, "bob", PASSWORD)
        await FileSystem(bob).write_bytes("mine.txt", b"bob's")
        await links.publish(owner, "docs/sub")
        fs = FileSystem(reader, ReadingResolver(bob), bob)
        assert await fs.read_bytes("mine.txt", 100) == b"bob's"
        assert await fs.read_bytes("/bob/mine.txt", 100) == b"bob's"
        assert await fs.read_bytes("/alice/docs/sub/b.txt", 100) == b"below"
        with pytest.raises(NotFound, match="not published"):
            await fs.read_bytes("/alice/docs/a.txt", 100)
        with pytest.raises(Denied, match="read-only to you"):
            await fs.write_bytes("/alice/docs/sub/c.txt", b"no")


async def test_links_are_resealed_around_a_replaced_item(
    pair: Pair, owner: FileSystem, reader: NodeApi
) -> None:
    """What a rotation calls once an item has new keys and labels: its links read the new
    item, with their limits as they were."""
    with trio.fail_after(TIMEOUT):
        url = await links.create_link(owner, "docs/a.txt", node_url=pair.other_url, max_uses=3)
        assert await read_link(reader, url) == SECRET
        await owner.remove("docs/a.txt")
        await owner.write_bytes("docs/a.txt", b"new keys, new labels")
        with pytest.raises(NotFound):
            await read_link(reader, url)  # the old capability finds nothing
        assert await links.reseal_links(owner, "/alice/docs") == 1
        assert await links.reseal_links(owner, "/alice/public") == 0
        assert await read_link(reader, url) == b"new keys, new labels"
        with pytest.raises(Denied, match="used its 3 times"):
            await read_link(reader, url)


async def test_a_writable_link_writes_its_item_and_nothing_else(
    pair: Pair, owner: FileSystem, reader: NodeApi
) -> None:
    """`--writable` gives the item a writer of its own (one rotation, which the item's other
    links follow); whoever opens the link writes below it without an account, through another
    node, and the owner reads what they wrote. Revoking the link takes the write access back
    from a holder who opened it before."""
    with trio.fail_after(TIMEOUT):
        read_url = await links.create_link(owner, "docs/a.txt", node_url=pair.other_url)
        url = await links.create_link(
            owner, "docs", node_url=pair.other_url, writable=True, rotate=sharing.rotate
        )
        assert await links.has_own_writer(owner, "/alice/docs")
        assert await read_link(reader, read_url) == SECRET  # resealed around the new keys
        holder = await link_filesystem(reader, url)
        await holder.write_bytes("/link/dropped.txt", b"from the link")
        await holder.mkdir("/link/sub/deeper")
        await holder.write_bytes("/link/a.txt", b"overwritten")
        assert await owner.read_bytes("/alice/docs/dropped.txt", 100) == b"from the link"
        assert await owner.read_bytes("/alice/docs/a.txt", 100) == b"overwritten"
        assert [i.name for i in await owner.listdir("/alice/docs/sub")] == ["b.txt", "deeper"]
        for outside in ("/alice/x", "/alice/docs2/x", "/bob/x"):
            with pytest.raises(NotFound, match="/link"):
                await holder.write_bytes(outside, b"no")

        # a read-only link, and a writable link to a folder inside one with its own writer
        readonly = await link_filesystem(reader, await links.create_link(
            owner, "docs/sub", node_url=pair.other_url))  # fmt: skip
        with pytest.raises(Denied, match="read-only to you"):
            await readonly.write_bytes("/link/x", b"no")
        inner = await links.create_link(
            owner, "docs/sub", node_url=pair.other_url, writable=True, rotate=sharing.rotate
        )
        assert await links.has_own_writer(owner, "/alice/docs/sub")
        await (await link_filesystem(reader, inner)).write_bytes("/link/in.txt", b"inner")
        await holder.write_bytes("/link/after.txt", b"the outer link still writes")
        assert await owner.read_bytes("/alice/docs/sub/in.txt", 100) == b"inner"

        # revoked: the holder's old capability writes nothing any more
        await links.revoke_link(owner, link_format.parse_url(url).id, rotate=sharing.rotate)
        assert not await links.has_own_writer(owner, "/alice/docs")
        with pytest.raises((Denied, NotFound)):
            await holder.write_bytes("/link/late.txt", b"too late")
        assert "late.txt" not in [i.name for i in await owner.listdir("/alice/docs")]
        assert await read_link(reader, read_url) == b"overwritten"
        assert await owner.read_bytes("/alice/docs/sub/in.txt", 100) == b"inner"
        await (await link_filesystem(reader, inner)).write_bytes("/link/in.txt", b"still")
