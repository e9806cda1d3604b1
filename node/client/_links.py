"""Secret links and publishing from the client's side (DESIGN §10).

A link seals an item's capability under a key that lives only in the URL's fragment; its
target goes in the owner's identity WriterData `links` CHAMP, where the home node enforces
expiry and uses through `link.get`. Publishing puts a read-only capability in the `public`
CHAMP, which anyone reads without an account through `PublicResolver`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Final

import trio

from node import threads
from node.client import _typed as typed
from node.client._api import NodeApi, Route
from node.client._blocks import BlockCache, Blocks
from node.client._fs import MAX_COMMIT_ATTEMPTS, FileSystem
from node.client._resolve import HomeResolver, Listing, Resolved, Resolver, Resolvers
from node.client._session import Session, test_kdf_allowed
from node.client._trees import TreeUpdate, WriterTree, commit_trees
from protocols import champ, crypto, links, publishing
from protocols.cid import CID, CODEC_DAG_CBOR
from protocols.cryptree import Capability
from protocols.errors import (
    AuthFailed,
    Conflict,
    Corrupted,
    Denied,
    MalformedInput,
    NotFound,
    PyrgosError,
    StaleRoot,
    TooLarge,
)
from protocols.links import LinkRecord, LinkTarget, LinkUrl
from protocols.methods import LinkGet, LinkGetReply, PkiLookup, PkiLookupReply
from protocols.names import check_username, split_path
from protocols.pki import Claim
from protocols.publishing import PublicEntry
from protocols.writerdata import WriterData

STATE_DIR: Final = ".pyrgos"  # the user's hidden state folder, as node/client/_social.py
LINKS_FILE: Final = "links"
SHARED_DIR: Final = "shared"  # /<me>/shared/<them>/: what I share with each follower
# Never linked or published, nor is the home that holds them (see `_absolute`).
PRIVATE_FOLDERS: Final = frozenset({STATE_DIR, SHARED_DIR})
LINK_NAME: Final = "link"  # the name a FileSystem reading one link gives its item: /link
Clock = Callable[[], int]  # milliseconds since the epoch
# Rotating an item (new keys, labels and BATs for its subtree, DESIGN §6): what makes a
# revoked link's or an unpublished item's old capability useless to whoever opened it.
Rotate = Callable[[FileSystem, str], Awaitable[None]]


# -- the owner's identity WriterData -------------------------------------------------------


async def _update_identity(
    fs: FileSystem, change: Callable[[Blocks, WriterData], Awaitable[WriterData | None]]
) -> None:
    """Apply `change` to the session user's identity WriterData in one commit, redone on a
    lost race; None from `change`: nothing to do."""
    session = fs.require_session()
    tree = WriterTree(session.owner, session.route, session.identity, session.mirror_id)
    for attempt in range(MAX_COMMIT_ATTEMPTS):
        blocks = Blocks(fs.api, tree.route, fs.cache)
        root = await tree.read(blocks)
        data = await change(blocks, root.data)
        if data is None:
            return
        try:
            await commit_trees(fs.api, blocks, [TreeUpdate(tree, root, data.tree, data)])
            return
        except StaleRoot:
            await trio.sleep(crypto.random_fraction() * 0.02 * 2**attempt)
    raise Conflict("the account's root kept changing under this operation; try again")


async def _champ_get(blocks: Blocks, root: CID | None, key: bytes) -> CID | None:
    if root is None:
        return None
    return (await blocks.lookup(root, [key]))[key]


def _absolute(fs: FileSystem, path: str) -> str:
    """`path` as the normalised absolute path of one of the session user's own items that
    may be handed out: not the home itself, nor anything in the client's state folder or in
    `shared`, which hold the user's social graph, link keys and the capabilities shared with
    each follower (a link or publication of those would hand all of that out)."""
    me = fs.require_session().username
    names = split_path(path)
    if not path.startswith("/"):
        names = [me, *names]
    if not names or names[0] != me:
        raise Denied(f"only your own items can be linked or published (under /{me})")
    if len(names) == 1 or names[1] in PRIVATE_FOLDERS:
        raise Denied(
            f"/{'/'.join(names[:2])} holds your private state (contacts, link keys, what you"
            " share with whom): link or publish the items in it instead"
        )
    return publishing.normalise("/" + "/".join(names))


# -- the owner's records -------------------------------------------------------------------


def _records_path(fs: FileSystem) -> str:
    return f"/{fs.require_session().username}/{STATE_DIR}/{LINKS_FILE}"


async def _load_records(fs: FileSystem) -> dict[bytes, LinkRecord]:
    path = _records_path(fs)
    try:
        data = await fs.read_bytes(path, links.MAX_RECORDS_BYTES)
    except NotFound:
        return {}
    except TooLarge as exc:
        raise Corrupted(f"{path} is damaged: {exc.message}") from None
    try:
        return links.decode_records(data)
    except (MalformedInput, TooLarge) as exc:
        raise Corrupted(f"{path} is damaged: {exc.message}") from None


async def _save_records(fs: FileSystem, records: dict[bytes, LinkRecord]) -> None:
    data = links.encode_records(records)
    path = _records_path(fs)
    try:
        await fs.write_bytes(path, data)
    except NotFound:  # the first piece of state: make the hidden folder
        await fs.mkdir(path.rsplit("/", 1)[0], parents=True)
        await fs.write_bytes(path, data)


# -- secret links: the owner's side ---------------------------------------------------------


async def create_link(
    fs: FileSystem,
    path: str,
    *,
    node_url: str,
    password: str | None = None,
    expires: int | None = None,
    max_uses: int | None = None,
    writable: bool = False,
    rotate: Rotate | None = None,
    clock: Clock | None = None,
    test_kdf: bool | None = None,
) -> str:
    """Make a secret link to the item at `path` (one of the session user's) and return its
    URL at `node_url`. `expires` is seconds from now, `max_uses` the uses the home node allows;
    `writable` seals the writable capability, so that whoever opens the link can change the
    item and what is below it, and nothing else: an item without a writer of its own is first
    given one by `rotate` (which then reseals the link around its new keys; without `rotate`,
    Conflict). Until that rotation is done the link is sealed read-only.

    The target is committed to the identity WriterData's `links` CHAMP first, then recorded
    in `/<me>/.pyrgos/links`; a failure in between takes the target out again.
    """
    clock = clock or fs.api.now_ms
    session = fs.require_session()
    normalised = _absolute(fs, path)
    if expires is not None and not 1 <= expires <= links.MAX_DURATION_S:
        raise MalformedInput("a link lasts from one second to 3650 days")
    if max_uses is not None and not 1 <= max_uses <= links.MAX_USES:
        raise MalformedInput(f"a link's uses are 1 to {links.MAX_USES}")
    cap = await fs.capability(normalised)
    if cap.owner != session.owner:
        raise Denied("only your own items can be linked")
    needs_writer = writable and not await has_own_writer(fs, normalised)
    if needs_writer and rotate is None:
        raise Conflict(f"{normalised} has no writer of its own, so a writable link could write"
                       " nothing")  # fmt: skip
    if needs_writer or not writable:
        cap = cap.read_only()
    key, label = crypto.random_bytes(links.KEY_BYTES), crypto.random_bytes(links.LABEL_BYTES)
    url = links.format_url(node_url, session.owner, label, key)  # checks the node URL first
    weak = test_kdf_allowed() if test_kdf is None else test_kdf
    keys = await threads.run_sync(lambda: links.derive(key, password, test_kdf=weak))
    made = clock()
    expiry = None if expires is None else made + expires * 1000
    record = LinkRecord(label, normalised, keys.cap_key, made, expiry, max_uses, writable,
                        password is not None, keys.verifier)  # fmt: skip
    target = record.target([session.mirror_id], cap)
    records = await _load_records(fs)
    records[label] = record
    links.encode_records(records)  # TooLarge (too many links) before anything is written
    await _set_target(fs, label, target)
    try:
        await _save_records(fs, records)
    except BaseException:
        # Else the link works unrecorded, and `pyrgos link revoke ID` still removes it.
        with trio.CancelScope(shield=True), contextlib.suppress(PyrgosError):
            await _set_target(fs, label, None)
        raise
    if needs_writer and rotate is not None:
        await rotate(fs, normalised)  # into a writer of its own: the link is writable
    return url


async def has_own_writer(fs: FileSystem, path: str) -> bool:
    """Whether the item at `path` (absolute) is a subtree with a writer of its own, which is
    what a writable share or link hands out: neither the owner's identity writer nor the
    writer of a folder above it is ever handed out."""
    cap = await fs.capability(path)
    parent = await fs.capability(path.rsplit("/", 1)[0])
    return cap.write_key is not None and cap.writer != parent.writer


async def writable_paths(fs: FileSystem) -> set[str]:
    """The paths of the session user's writable links: items a rotation keeps in a writer of
    their own."""
    return {r.path for r in (await _load_records(fs)).values() if r.writable}


async def _set_target(fs: FileSystem, label: bytes, target: LinkTarget | None) -> bool:
    """Put (or, None, remove) the link target of `label`; whether anything changed."""
    key = links.lookup_key(label)
    changed = False

    async def change(blocks: Blocks, data: WriterData) -> WriterData | None:
        nonlocal changed
        current = await _champ_get(blocks, data.links, key)
        root = data.links or champ.EMPTY_ROOT
        if target is None:
            if current is None:
                changed = False
                return None
            root = await champ.remove(blocks, root, key, current)
        else:
            root = await champ.put(blocks, root, key, current, await blocks.put(target.encode()))
        changed = True
        return replace(data, links=None if root == champ.EMPTY_ROOT else root)

    await _update_identity(fs, change)
    return changed


async def list_links(fs: FileSystem) -> list[LinkRecord]:
    """The session user's links, oldest first."""
    records = await _load_records(fs)
    return sorted(records.values(), key=lambda r: (r.created, r.label))


async def revoke_link(
    fs: FileSystem, link_id: str, *, rotate: Rotate | None = None
) -> LinkRecord | None:
    """Remove the link `link_id` (its label's text, as `list_links` shows it) from the links
    CHAMP, so its home node answers NotFound, and from the records; return its record (None
    when only the target was left). With `rotate`, the item is then rotated, so that a reader
    who opened the link before can no longer read it either."""
    try:
        label = links.decode_b64(link_id, links.LABEL_BYTES, "id")
    except MalformedInput:
        raise MalformedInput(
            f"not a link id: {link_id[:64]!r} (`pyrgos link list` shows them)"
        ) from None
    records = await _load_records(fs)
    record = records.pop(label, None)
    removed = await _set_target(fs, label, None)
    if record is None and not removed:
        raise NotFound(f"no link with id {link_id} (`pyrgos link list` shows them)")
    if record is not None:
        await _save_records(fs, records)
        if rotate is not None:
            await rotate(fs, record.path)
    return record


async def reseal_links(fs: FileSystem, path: str) -> int:
    """Rebuild the targets of the links to `path` and to the items below it around their
    current capabilities, in one commit: what a rotation of that subtree (new labels and
    keys) calls once done, so that its links keep working. Links whose item is gone are left
    as they are. Returns how many targets were rebuilt."""
    session = fs.require_session()
    top = publishing.normalise(path)
    records = await _load_records(fs)
    targets: dict[bytes, LinkTarget] = {}
    for record in records.values():
        if record.path != top and not record.path.startswith(top + "/"):
            continue
        try:
            cap = await fs.capability(record.path)
        except NotFound:
            continue
        writable = record.writable and await has_own_writer(fs, record.path)
        targets[record.label] = record.target(
            [session.mirror_id], cap if writable else cap.read_only()
        )
    if not targets:
        return 0
    rebuilt = 0

    async def change(blocks: Blocks, data: WriterData) -> WriterData | None:
        nonlocal rebuilt
        rebuilt = 0
        root = data.links
        if root is None:
            return None
        for label, target in targets.items():
            key = links.lookup_key(label)
            current = await _champ_get(blocks, root, key)
            if current is None:  # revoked meanwhile
                continue
            root = await champ.put(blocks, root, key, current, await blocks.put(target.encode()))
            rebuilt += 1
        return replace(data, links=root) if rebuilt else None

    await _update_identity(fs, change)
    return rebuilt


# -- secret links: the reader's side --------------------------------------------------------


async def claim_of(
    api: NodeApi, *, username: str | None = None, identity: CID | None = None
) -> Claim:
    """A user's PKI claim by name or by identity key hash, checked here: signed by its own
    identity key and naming what was asked for, never on the node's word."""
    if username is not None:
        check_username(username)
    reply = await typed.request(api, PkiLookup(username, identity), PkiLookupReply)
    claim = reply.claim
    try:
        claim.verify()
    except PyrgosError as exc:
        raise Corrupted(f"the node returned a PKI claim that does not verify: {exc}") from None
    if username is not None and claim.username != username:
        raise Corrupted(f"the node returned the PKI claim of another user than {username}")
    if identity is not None and claim.identity != identity:
        raise Corrupted("the node returned the PKI claim of another identity than asked")
    return claim


async def open_link(
    api: NodeApi, url: str | LinkUrl, password: str | None = None, *, test_kdf: bool | None = None
) -> tuple[Capability, Route]:
    """The capability a secret link holds, and the route to read it: one use of the link at
    its owner's home (through the node `api` talks to, which forwards it). AuthFailed for a
    wrong or missing password; Denied for a link past its expiry or its uses; NotFound for a
    revoked one."""
    parsed = url if isinstance(url, LinkUrl) else links.parse_url(url)
    claim = await claim_of(api, identity=parsed.owner)  # first: a use is not spent in vain
    weak = test_kdf_allowed() if test_kdf is None else test_kdf
    keys = await threads.run_sync(lambda: links.derive(parsed.key, password, test_kdf=weak))
    try:
        reply = await typed.request(
            api, LinkGet(parsed.owner, parsed.label, keys.proof), LinkGetReply
        )
    except AuthFailed:
        if password is None:
            raise AuthFailed("this link needs a password (or the link is damaged)") from None
        raise AuthFailed("wrong link password (or the link is damaged)") from None
    cap = links.open_capability(keys.cap_key, parsed.label, reply.cap)
    if cap.owner != parsed.owner:
        raise Corrupted("the link's capability names another owner than its URL")
    return cap, Route(parsed.owner, claim.home.encode())


class CapabilityResolver:
    """One capability as a whole filesystem: `/link/...` is the item it names and what is
    below it, read through `route`. How a link is read without an account."""

    def __init__(self, cap: Capability, route: Route) -> None:
        self.cap = cap
        self.route = route

    async def resolve(self, username: str, names: list[str]) -> Resolved:
        if username != LINK_NAME:
            raise NotFound(f"a link's item is /{LINK_NAME}")
        return Resolved(self.cap, self.route, names)

    async def list_top(self, username: str) -> list[Listing] | None:
        await self.resolve(username, [])
        return None


async def link_filesystem(
    api: NodeApi, url: str | LinkUrl, password: str | None = None, *, test_kdf: bool | None = None
) -> FileSystem:
    """A FileSystem without a session reading one link's item at `/link`."""
    cap, route = await open_link(api, url, password, test_kdf=test_kdf)
    return FileSystem(api, CapabilityResolver(cap, route))


# -- publishing ------------------------------------------------------------------------------


async def publish(fs: FileSystem, path: str) -> str:
    """Make the item at `path` (one of the session user's) readable by anyone: its read-only
    capability goes in the identity WriterData's `public` CHAMP. Returns its published path."""
    session = fs.require_session()
    normalised = _absolute(fs, path)
    cap = (await fs.capability(normalised)).read_only()
    if cap.owner != session.owner:
        raise Denied("only your own items can be published")
    entry = PublicEntry(normalised, cap).encode()
    key = publishing.path_key(normalised)

    async def change(blocks: Blocks, data: WriterData) -> WriterData | None:
        current = await _champ_get(blocks, data.public, key)
        new = await blocks.put(entry)
        if current == new:
            return None  # published as it is already
        root = await champ.put(blocks, data.public or champ.EMPTY_ROOT, key, current, new)
        return replace(data, public=root)

    await _update_identity(fs, change)
    return normalised


async def unpublish(fs: FileSystem, path: str, *, rotate: Rotate | None = None) -> str:
    """Take the item at `path` out of the public index (NotFound when it is not published);
    with `rotate`, rotate it so that the capability once published reads nothing."""
    normalised = _absolute(fs, path)
    key = publishing.path_key(normalised)

    async def change(blocks: Blocks, data: WriterData) -> WriterData | None:
        current = await _champ_get(blocks, data.public, key)
        if current is None or data.public is None:
            raise NotFound(f"{normalised} is not published")
        root = await champ.remove(blocks, data.public, key, current)
        return replace(data, public=None if root == champ.EMPTY_ROOT else root)

    await _update_identity(fs, change)
    if rotate is not None:
        await rotate(fs, normalised)
    return normalised


class PublicResolver:
    """What users publish, for anyone: `/alice/<path>` starts at the longest published prefix
    of the path in alice's public index (PKI lookup, her identity pointer and WriterData, one
    CHAMP lookup of every prefix), and the rest is walked from its capability."""

    def __init__(self, api: NodeApi, cache: BlockCache | None = None) -> None:
        self.api = api
        self.cache = BlockCache() if cache is None else cache

    async def resolve(self, username: str, names: list[str]) -> Resolved:
        claim = await claim_of(self.api, username=username)
        route = Route(claim.identity, claim.home.encode())
        blocks = Blocks(self.api, route, self.cache)
        root = await WriterTree(claim.identity, route).read(blocks)
        shown = "/" + "/".join([username, *names])
        if root.data.public is None:
            raise NotFound(f"{shown} is not published: {username} publishes nothing")
        prefixes = ["/" + "/".join([username, *names[:depth]]) for depth in range(len(names) + 1)]
        keys = {publishing.path_key(p): p for p in prefixes}
        found = await blocks.lookup(root.data.public, keys)
        for depth in range(len(names), -1, -1):
            cid = found[publishing.path_key(prefixes[depth])]
            if cid is None:
                continue
            if cid.codec != CODEC_DAG_CBOR:
                raise Corrupted(f"{username}'s public index links a block that is no entry")
            try:
                entry = PublicEntry.decode(await blocks.get(cid))
            except (MalformedInput, TooLarge) as exc:
                raise Corrupted(f"{username}'s public entry is malformed: {exc.message}") from None
            if entry.path != prefixes[depth] or entry.cap.owner != claim.identity:
                raise Corrupted(f"{username}'s public index holds an entry of another path")
            return Resolved(entry.cap, route, names[depth:])
        raise NotFound(f"{shown} is not published (nor anything above it)")

    async def list_top(self, username: str) -> list[Listing] | None:
        check_username(username)
        return None  # `/user` lists only when it is published itself


class ReadingResolver:
    """A logged-in user's view for reading: their own home for `/<me>/...`; for another
    user's paths, `others` in order (what they share with me), then what they publish, so
    that the error of a path found nowhere is the public index's, not "not your home"."""

    def __init__(self, session: Session, others: Sequence[Resolver] = ()) -> None:
        self.username = session.username
        self.home = HomeResolver(session)
        self.others = Resolvers([*others, PublicResolver(session.api)])

    def _source(self, username: str) -> Resolver:
        return self.home if username == self.username else self.others

    async def resolve(self, username: str, names: list[str]) -> Resolved:
        return await self._source(username).resolve(username, names)

    async def list_top(self, username: str) -> list[Listing] | None:
        return await self._source(username).list_top(username)
