"""Mirroring (DESIGN §11): the users this node mirrors, the task that copies their pointers and
blocks from their home node, and the home's side of it (a mirror's request for the login
record). Owns Space.MIRRORS.

MIRRORS records (CBOR):
  b"u" ‖ username -> {v, identity, bat, added, synced, behind, error, blocks, bytes}
  b"w" ‖ writer key hash -> username: the writers of mirrored users (their pointers are kept
      in Space.POINTERS, under no local owner, so GC marks from them and pointer.get serves them)
  b"a" ‖ username -> the user's login record, as their home keeps it (Space.ACCOUNTS)
  b"t" ‖ mirror BAT id -> username: whose blocks name that BAT (a read auth made out to the
      user's home is good here too, protocols/bats.py rule 5)
  (b"h" records are node/server/_migrate.py's: users handed to another home)

Nothing is taken on the home's word: every pointer's signature is checked against the writer
key, sequences never go back, sub-writers come only from owner proofs the identity WriterData
lists, and every block hashes to its CID and, if structured, has a known shape.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import trio

from node import threads
from node.server._blocks import UPLOAD_TTL, close_uploads
from node.server._gc import mark, stored_links
from node.store import Space, Store
from protocols import bats, cbor
from protocols.cid import CID, CODEC_DAG_CBOR
from protocols.crypto import VerifyKey
from protocols.errors import (
    Conflict,
    Corrupted,
    Denied,
    InvalidSignature,
    MalformedInput,
    NotFound,
    PyrgosError,
    TooLarge,
    Unavailable,
)
from protocols.methods import (
    UPLOAD_ID_BYTES,
    AdminMirrorAdd,
    AdminMirrorList,
    AdminMirrorRemove,
    Done,
    MirrorAccount,
    MirrorAccountReply,
    PointerGet,
    PointerGetReply,
    Report,
)
from protocols.mirrors import MirrorToken, account_auth, check_account_auth
from protocols.owners import owned_writers
from protocols.pointers import CONTEXT as POINTER_CONTEXT
from protocols.pointers import PointerUpdate
from protocols.structured import check_structured, structured_links
from protocols.writerdata import WriterData

if TYPE_CHECKING:
    from node.server._service import NodeService

log = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
# Seconds between rounds once every mirrored user is caught up: a write shows at the mirror
# within a few seconds, and a round that finds nothing new costs one pointer.get per writer
# (a few hundred bytes), small beside the writes it keeps up with.
POLL_INTERVAL: Final = 2.0
# Block bytes one user may take in one round: a user uploading gigabytes holds the others up
# for a few seconds at most; what a round copied stays pinned (survives GC and restarts).
ROUND_BYTES: Final = 256 * MiB
# Fetched blocks handed to the storing thread at a time. One batch is written while the next
# arrives, so at most two are held: the fetch does not wait for the disk, nor memory grow with
# the tree.
STORE_BATCH_BYTES: Final = 4 * MiB
PROBE_BLOCKS: Final = 64  # structured blocks looked at to find one that names a BAT
MAX_MIRRORED: Final = 1000  # users one node mirrors: bounds a round's pointer reads
RETRY_FIRST: Final = 2.0  # seconds before a failed user is tried again, doubling each time
RETRY_CAP: Final = 60.0  # a home back up is noticed within a minute
_USER: Final = b"u"
_WRITER: Final = b"w"
_ACCOUNT: Final = b"a"
_BAT: Final = b"t"

GetBlock = Callable[[CID], Awaitable[bytes]]


@dataclass
class MirrorState:
    """The MIRRORS user record."""

    username: str
    identity: CID
    secret: bytes = field(repr=False)  # the mirror BAT
    added: int = 0
    synced: int | None = None  # when a round last ended with every writer as the home has it
    behind: int | None = None  # since when the mirror has been behind (None: caught up)
    error: str | None = None  # what stopped the last round, if anything
    blocks: int = 0  # blocks the mirrored pointers reach, at the last complete round
    size: int = 0

    @property
    def token(self) -> MirrorToken:
        return MirrorToken(self.username, self.secret)

    def encode(self) -> bytes:
        return cbor.encode(
            {
                "v": 1,
                "identity": self.identity,
                "bat": self.secret,
                "added": self.added,
                "synced": self.synced,
                "behind": self.behind,
                "error": self.error,
                "blocks": self.blocks,
                "bytes": self.size,
            }
        )

    @classmethod
    def decode(cls, username: str, raw: bytes) -> MirrorState:
        v = cbor.decode(raw)
        return cls(
            username, v["identity"], v["bat"], v["added"], v["synced"], v["behind"],
            v["error"], v["blocks"], v["bytes"],
        )  # fmt: skip


def verify_pointer(writer: CID, update: PointerUpdate) -> None:
    """The writer's signature on a pointer update a home sent (InvalidSignature)."""
    try:
        key = VerifyKey.from_key_hash(writer)
        key.verify(update.signed_part, update.signature, POINTER_CONTEXT)
    except InvalidSignature as exc:
        raise InvalidSignature(f"the pointer of writer {writer} is not signed by it") from exc


async def first_private_ids(get: GetBlock, root: CID) -> list[bytes]:
    """The BAT ids of the first private structured block found below the identity WriterData
    at `root` (breadth first, at most PROBE_BLOCKS blocks): every block a user writes names
    their mirror BAT, so this tells whose mirror BAT a token holds."""
    data = await get(root)
    level = [WriterData.decode(data).tree]
    seen = 0
    while level and seen < PROBE_BLOCKS:
        below: list[CID] = []
        for cid in level:
            if cid.codec != CODEC_DAG_CBOR or cid.is_identity or seen >= PROBE_BLOCKS:
                continue
            seen += 1
            block = await get(cid)
            ids = bats.block_bat_ids(cid, block)
            if ids:
                return ids
            below.extend(structured_links(block))
        level = below
    raise NotFound("no private block found under the user's root to check the token against")


class Mirrors:
    """The users this node mirrors (admin calls and the mirror task) and the home's
    `mirror.account`."""

    def __init__(self, node: NodeService) -> None:
        self.node = node
        self.store: Store = node.store
        self.wake = trio.Event()  # set when a user is added: the task starts a round now
        self.rounds = 0
        self._retry: dict[str, tuple[int, float]] = {}  # username -> (failures, next try)

    # -- records --------------------------------------------------------------------------

    def state(self, username: str) -> MirrorState | None:
        raw = self.store.get(Space.MIRRORS, _USER + username.encode())
        return None if raw is None else MirrorState.decode(username, raw)

    def users(self) -> list[MirrorState]:
        return [
            MirrorState.decode(key[len(_USER) :].decode(), raw)
            for key, raw in self.store.items(Space.MIRRORS, _USER)
        ]

    def _save(self, state: MirrorState) -> None:
        self.store.put(Space.MIRRORS, _USER + state.username.encode(), state.encode())

    def writers(self, username: str) -> list[CID]:
        name = username.encode()
        return [
            CID.from_bytes(writer[len(_WRITER) :])
            for writer, owner in self.store.items(Space.MIRRORS, _WRITER)
            if owner == name
        ]

    def holds(self, owner: CID) -> bool:
        """Whether this node keeps a copy of the user whose identity is `owner`."""
        return self.store.get(Space.MIRRORS, _WRITER + owner.raw) is not None

    def homes_for(self, block_ids: list[bytes]) -> tuple[bytes, ...]:
        """The home node ids of the mirrored users whose mirror BAT a block names."""
        homes = []
        for bat_id in block_ids:
            if bat_id[:1] != b"\x12":  # only hashed ids are mirror BATs
                continue
            username = self.store.get(Space.MIRRORS, _BAT + bat_id)
            home = None if username is None else self.node.home_of_username(username.decode())
            if home is not None:
                homes.append(home.encode())
        return tuple(homes)

    def account(self, username: str) -> bytes | None:
        """The login record kept for a mirrored user, if one was copied."""
        return self.store.get(Space.MIRRORS, _ACCOUNT + username.encode())

    # -- the home's side ------------------------------------------------------------------

    async def mirror_account(self, request: MirrorAccount, requester: bytes) -> MirrorAccountReply:
        """A mirror's request for a user's login record: the proof is checked (protocols/
        mirrors.py), then that the user's blocks name the BAT it was made with."""
        raw = self.store.get(Space.ACCOUNTS, request.username.encode())
        if raw is None:
            raise NotFound(f"user {request.username!r} is not homed on this node")
        check_account_auth(
            self.store.get(Space.BATS, request.bat),
            request.username,
            request.expiry,
            request.mac,
            requester=requester,
            server=self.node.node_id_bytes,
            now=int(self.node.clock()),
        )
        identity = cbor.decode(raw, limit=64 * 1024)["identity"]
        pointer = self.node.pointers.pointer(identity)
        if pointer is None:
            raise NotFound("the user has no root pointer")
        ids = await first_private_ids(self.node.blocks.source.get, pointer.new)
        if request.bat not in ids:
            raise Denied("this mirror BAT is not the user's")
        return MirrorAccountReply(raw)

    # -- admin calls ----------------------------------------------------------------------

    async def admin_add(self, request: AdminMirrorAdd, requester: bytes) -> Report:
        self.node.check_admin(request.token)
        token = MirrorToken.from_text(request.mirror)
        state = await self.check_token(token)
        existing = self.state(token.username)
        old_bat = None if existing is None else bats.hashed_id(existing.secret)
        if existing is not None:
            existing.secret = token.secret
            state = existing
        elif sum(1 for _ in self.store.keys(Space.MIRRORS, _USER)) >= MAX_MIRRORED:
            raise Denied(f"this node mirrors {MAX_MIRRORED} users already")
        with self.store.batch(sync=True) as batch:
            if old_bat is not None:
                batch.delete(Space.MIRRORS, _BAT + old_bat)
            batch.put(Space.MIRRORS, _USER + state.username.encode(), state.encode())
            batch.put(Space.MIRRORS, _BAT + token.bat_id, state.username.encode())
        self.wake.set()
        return Report({"username": state.username, "identity": state.identity})

    async def check_token(self, token: MirrorToken) -> MirrorState:
        """Refuse a token unless the user's claim (this node's PKI view) names a home elsewhere,
        that home's identity pointer is signed by the claim's key, and the user's blocks
        there name the token's BAT and open to it."""
        node = self.node
        home, identity = await self._home(token.username)
        pointer = await self._remote_pointer(home, identity)
        if pointer is None:
            raise NotFound(f"{token.username!r} has no root pointer at their home")
        now = int(node.clock())

        async def get(cid: CID) -> bytes:
            auth = bats.make_read_auth(
                token.secret, cid, node.node_id_bytes, home.encode(), now, hashed=True
            )
            assert node.network is not None
            try:
                return await node.network.fetch_block(home, cid, auth)
            except (NotFound, Denied) as exc:
                raise Denied(
                    f"the token does not open {token.username!r}'s blocks at their home: is it "
                    "theirs and whole?"
                ) from exc

        try:
            ids = await first_private_ids(get, pointer.new)
        except (MalformedInput, TooLarge) as exc:
            raise Corrupted(f"the home sent a malformed root block: {exc.message}") from exc
        if token.bat_id not in ids:
            raise Denied(f"the token's mirror BAT is not the one {token.username!r}'s blocks name")
        return MirrorState(token.username, identity, token.secret, now)

    async def admin_list(self, request: AdminMirrorList, requester: bytes) -> Report:
        self.node.check_admin(request.token)
        now = int(self.node.clock())
        rows = []
        for state in self.users():
            rows.append(
                {
                    "username": state.username,
                    "state": "error" if state.error else "behind" if state.behind else "ok",
                    "synced": state.synced,
                    "lag": 0 if state.behind is None else max(0, now - state.behind),
                    "blocks": state.blocks,
                    "bytes": state.size,
                    "writers": len(self.writers(state.username)),
                    "error": state.error,
                }
            )
        return Report({"mirrors": rows})

    async def admin_remove(self, request: AdminMirrorRemove, requester: bytes) -> Done:
        self.node.check_admin(request.token)
        state = self.state(request.username)
        if state is None:
            raise NotFound(f"this node does not mirror {request.username!r}")
        async with self.node.write_lock:
            with self.store.batch(sync=True) as batch:
                for writer in self.writers(request.username):
                    self._drop_writer(batch, writer)
                batch.delete(Space.MIRRORS, _USER + request.username.encode())
                batch.delete(Space.MIRRORS, _ACCOUNT + request.username.encode())
                batch.delete(Space.MIRRORS, _BAT + bats.hashed_id(state.secret))
        return Done()

    def hold(self, batch: Any, state: MirrorState, account: bytes, writers: list[CID]) -> None:
        """Keep a user who moved away from this node as a mirrored one (node/server/
        _migrate.py): their record, login record, BAT and writers, in `batch`."""
        name = state.username.encode()
        batch.put(Space.MIRRORS, _USER + name, state.encode())
        batch.put(Space.MIRRORS, _ACCOUNT + name, account)
        batch.put(Space.MIRRORS, _BAT + bats.hashed_id(state.secret), name)
        for writer in writers:
            batch.put(Space.MIRRORS, _WRITER + writer.raw, name)

    def forget(self, batch: Any, state: MirrorState, writers: list[CID]) -> None:
        """Stop mirroring a user who moved here (node/server/_migrate.py), in `batch`: their
        pointers stay, now a hosted user's, and the copy's pin goes."""
        name = state.username.encode()
        batch.delete(Space.MIRRORS, _USER + name)
        batch.delete(Space.MIRRORS, _ACCOUNT + name)
        batch.delete(Space.MIRRORS, _BAT + bats.hashed_id(state.secret))
        for writer in writers:
            batch.delete(Space.MIRRORS, _WRITER + writer.raw)
        close_uploads(self.store, batch, (pin_of(state.username),))
        self._retry.pop(state.username, None)

    def _drop_writer(self, batch: Any, writer: CID) -> None:
        """Forget a mirrored writer and its pointer: what it reached is GC's to free."""
        batch.delete(Space.MIRRORS, _WRITER + writer.raw)
        if not self.store.has(Space.WRITERS, writer.raw):  # never a local user's pointer
            batch.delete(Space.POINTERS, writer.raw)

    # -- the mirror task ------------------------------------------------------------------

    async def run(self) -> None:
        """Keep every mirrored user up to date, forever: a round, then POLL_INTERVAL (or less,
        when a user is added or a round left work undone)."""
        while True:
            done = await self.sync_round(backoff=True)
            if done:
                with trio.move_on_after(POLL_INTERVAL):
                    await self.wake.wait()
            self.wake = trio.Event()

    async def sync_round(self, *, backoff: bool = False) -> bool:
        """One round over every mirrored user; True when each ended caught up or failed (a
        failure waits for the next poll), False when one ran out of its ROUND_BYTES. With
        `backoff` (the task), a user whose last rounds failed waits RETRY_FIRST doubling to
        RETRY_CAP seconds: a home that is down is not dialled, nor logged, every poll."""
        finished = True
        for state in self.users():
            name = state.username
            failures, due = self._retry.get(name, (0, 0.0))
            if backoff and due > self.node.clock():
                continue
            try:
                done = await self.sync_user(state)
            except PyrgosError as exc:
                self._failed(name, exc)
            except Exception as exc:  # a bug must not stop the other users' mirroring
                log.exception("mirroring %s failed", name)
                self._failed(name, Unavailable(f"internal error: {exc!r}"))
            else:
                self._retry.pop(name, None)
                finished = finished and done
                continue
            delay = min(RETRY_FIRST * 2**failures, RETRY_CAP)
            self._retry[name] = (failures + 1, self.node.clock() + delay)
        self.rounds += 1
        return finished

    def _failed(self, username: str, exc: PyrgosError) -> None:
        state = self.state(username)
        if state is None:  # removed meanwhile
            return
        log.warning("mirroring %s: %s", username, exc.message)
        self.node.stats["mirror_failures"] += 1
        state.error = exc.message
        if state.behind is None:
            state.behind = int(self.node.clock())
        self._save(state)

    async def _home(self, username: str) -> tuple[str, CID]:
        """(home node id, identity key hash) of a user, from this node's PKI view."""
        node = self.node
        pki = node.pki
        claim = None if pki is None else pki.lookup(username)
        if claim is None and pki is not None and pki.role == "mirror":
            await node.pki_calls.sync_on_demand()
            claim = pki.lookup(username)
        if claim is None:
            raise NotFound(f"unknown user {username!r}: the PKI has no claim for that name")
        if claim.home == node.settings.node_id:
            raise Conflict(f"{username!r} is homed on this node: there is nothing to mirror")
        if node.network is None:
            raise Unavailable("this node has no network to reach other nodes")
        return claim.home, claim.identity

    async def _remote_pointer(self, home: str, writer: CID) -> PointerUpdate | None:
        """The home's pointer of `writer`, its signature checked."""
        assert self.node.network is not None
        args = PointerGet(writer).to_cbor()
        assert isinstance(args, dict)
        answer = await self.node.network.call(home, "pointer.get", args)
        try:
            raw = PointerGetReply.from_cbor(answer).update
        except (MalformedInput, TooLarge) as exc:
            message = f"the home's answer to pointer.get is malformed: {exc.message}"
            raise Corrupted(message) from exc
        if raw is None:
            return None
        update = PointerUpdate.decode(raw)
        verify_pointer(writer, update)
        return update

    async def sync_user(self, state: MirrorState) -> bool:
        """Copy what changed of one user since the last round: the identity writer, its login
        record when it moved, then each sub-writer its WriterData owns. True when caught up."""
        home, identity = await self._home(state.username)
        if identity != state.identity:
            raise Conflict(
                f"the PKI names another identity key for {state.username!r} than when it was "
                "added: remove and add the mirror again with a new token"
            )
        budget = [ROUND_BYTES]
        moved = await self._sync_writer(home, state, identity, budget)
        if moved is None:
            return self._behind(state.username)
        changed = moved
        if moved or self.account(state.username) is None:
            await self._pull_account(home, state)
        current = self.node.pointers.pointer(identity)
        if current is None:
            raise NotFound(f"the home has no root pointer for {state.username!r}")
        root = self.store.get_block(current.new.raw)
        if root is None:
            raise NotFound("the mirrored root block is gone")
        owned = set(owned_writers(identity, WriterData.decode(root).owned))
        caught_up = True
        for writer in sorted(owned, key=lambda w: w.raw):
            step = await self._sync_writer(home, state, writer, budget)
            if step is None:
                caught_up = False
                break
            changed = changed or step
        if caught_up:
            stale = [w for w in self.writers(state.username) if w != identity and w not in owned]
            changed = changed or bool(stale)
            if stale:
                async with self.node.write_lock:
                    with self.store.batch() as batch:
                        for writer in stale:
                            self._drop_writer(batch, writer)
            return await self._caught_up(state.username, [identity, *owned], recount=changed)
        return self._behind(state.username)

    def _behind(self, username: str) -> bool:
        state = self.state(username)
        if state is not None and state.behind is None:
            state.behind = int(self.node.clock())
            self._save(state)
        return False

    async def _caught_up(self, username: str, writers: list[CID], *, recount: bool) -> bool:
        state = self.state(username)
        if state is None:
            return True
        if recount or state.synced is None:  # what the pointers reach: only when they moved
            roots = []
            for writer in writers:
                pointer = self.node.pointers.pointer(writer)
                if pointer is not None:
                    roots.append(pointer.new)
            reached = await threads.run_sync(mark, self.store, roots)
            state.blocks = len(reached)
            state.size = sum(self.store.block_size(raw) for raw in reached)
        state.synced = int(self.node.clock())
        state.behind = None
        state.error = None
        async with self.node.write_lock:
            with self.store.batch() as batch:
                close_uploads(self.store, batch, (pin_of(username),))  # all of it is reachable
                batch.put(Space.MIRRORS, _USER + username.encode(), state.encode())
        return True

    async def _pull_account(self, home: str, state: MirrorState) -> None:
        node = self.node
        assert node.network is not None
        bat, expiry, mac = account_auth(
            state.token, node.node_id_bytes, home.encode(), int(node.clock())
        )
        args = MirrorAccount(state.username, bat, expiry, mac).to_cbor()
        assert isinstance(args, dict)
        answer = await node.network.call(home, "mirror.account", args)
        try:
            account = MirrorAccountReply.from_cbor(answer).account
            record = cbor.decode(account, limit=64 * 1024)
            if not isinstance(record, dict) or record.get("identity") != state.identity:
                raise MalformedInput("the login record names another identity")
        except (MalformedInput, TooLarge) as exc:
            raise Corrupted(f"the home sent a malformed login record: {exc.message}") from exc
        async with node.write_lock:
            if self.state(state.username) is not None:  # not removed meanwhile
                self.store.put(Space.MIRRORS, _ACCOUNT + state.username.encode(), account)

    async def _sync_writer(
        self, home: str, state: MirrorState, writer: CID, budget: list[int]
    ) -> bool | None:
        """Bring one writer up to the home's pointer: True when it moved, False when it was
        current, None when the round's budget ran out first (blocks kept, pointer not set)."""
        node = self.node
        update = await self._remote_pointer(home, writer)
        current = node.pointers.pointer(writer)
        if update is None or update == current:
            return False
        if current is not None and update.sequence <= current.sequence:
            raise Conflict(
                f"the home offers pointer sequence {update.sequence} of writer {writer}, not "
                f"after the {current.sequence} this mirror holds: refused"
            )
        if node.store.has(Space.WRITERS, writer.raw):
            raise Denied(f"writer {writer} belongs to a user homed on this node")
        owner = node.store.get(Space.MIRRORS, _WRITER + writer.raw)
        if owner is not None and owner != state.username.encode():
            raise Denied(f"writer {writer} belongs to another mirrored user")
        async with node.gc_lock:  # nothing this walk keeps is collected before its pointer
            if not await self._copy_tree(home, state, update.new, budget):
                return None
            root = node.store.get_block(update.new.raw)
            if root is None or WriterData.decode(root).controller != writer:
                raise Corrupted(f"the root block of writer {writer} is not its WriterData")
            async with node.write_lock:
                if self.state(state.username) is None:  # removed meanwhile: keep nothing
                    return False
                with node.store.batch(sync=True) as batch:
                    batch.put(Space.POINTERS, writer.raw, update.encode())
                    batch.put(Space.MIRRORS, _WRITER + writer.raw, state.username.encode())
        node.stats["mirror_pointers"] += 1
        return True

    async def _copy_tree(self, home: str, state: MirrorState, root: CID, budget: list[int]) -> bool:
        """Fetch every block `root` reaches that is not stored here, storing them pinned
        (`pin_of`) while more arrive; False when the budget ran out first.

        The walk goes level by level, each level one pipelined fetch with its structured
        blocks asked for first: once those have arrived the next level's fetch starts, beside
        the rest of this one (a file's fragments), so the exchange never drains between
        levels. A stored structured block is read here for its links: a block can be stored
        without what it links (a relayed read caches one block)."""
        node = self.node
        assert node.network is not None
        seen: set[bytes] = set()
        level = [root]
        batches, batches_out = trio.open_memory_channel[list[tuple[CID, bytes]]](1)
        copy = _Copy(self, home, state, budget, batches)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._store_batches, state, batches_out)
                async with batches:
                    async with trio.open_nursery() as fetches:
                        while level and budget[0] > 0:
                            missing, below = await threads.run_sync(self._split_level, level, seen)
                            step = _Level(below, missing)
                            if missing:
                                fetches.start_soon(copy.fetch, step)
                                await step.structured.wait()
                            level = step.below
                    await copy.flush()
        except BaseExceptionGroup as group:  # the fetch's or the store's error, as it was
            raise _first_error(group) from None
        return not level and not copy.cut

    async def _store_batches(
        self, state: MirrorState, batches: trio.MemoryReceiveChannel[list[tuple[CID, bytes]]]
    ) -> None:
        async with batches:
            async for blocks in batches:
                async with self.node.write_lock:
                    await threads.run_sync(self.store_blocks, state, blocks)

    def _split_level(self, level: list[CID], seen: set[bytes]) -> tuple[list[CID], list[CID]]:
        """(CIDs of `level` to fetch, links of its stored structured blocks)."""
        missing: list[CID] = []
        below: list[CID] = []
        for cid in level:
            if cid.is_identity or cid.raw in seen:
                continue
            seen.add(cid.raw)
            if not self.store.has_block(cid.raw):
                missing.append(cid)
            else:
                below.extend(stored_links(self.store, cid))
        return missing, below

    def store_blocks(self, state: MirrorState, blocks: list[tuple[CID, bytes]]) -> None:
        """Store fetched blocks, each pinned (`pin_of`) until the user is caught up, so that
        a collection between rounds, or after a restart, keeps the work done."""
        pin = pin_of(state.username)
        expiry = int(self.node.clock()) + UPLOAD_TTL
        # One LevelDB write per block (the block, its index entry and its pin): a batch of many
        # 1 MiB blocks makes LevelDB grow its buffer by doubling, each step a fresh mapping to
        # fault in and copy into, which cost more than the writes' own overhead saves.
        for index, (cid, data) in enumerate(blocks):
            with self.store.batch() as batch:
                if index == 0:  # pinned for the mirrored user, who has no USAGE record
                    batch.put(Space.UPLOADS, pin, cbor.encode([state.identity, expiry]))
                if not self.store.has_block(cid.raw):
                    self.store.put_block(batch, cid.raw, data)
                batch.put(Space.UPLOADS, pin + cid.raw, b"")


def pin_of(username: str) -> bytes:
    """The upload id that pins what is copied of `username` until they are caught up: one per
    user, the same after a restart."""
    return hashlib.sha256(b"pyrgos/mirror-pin/1" + username.encode()).digest()[:UPLOAD_ID_BYTES]


class _Level:
    """One level of a copy's walk: what it fetches (structured blocks first) and the links
    found below it; `structured` is set once its structured blocks have all arrived."""

    def __init__(self, below: list[CID], missing: list[CID]) -> None:
        self.below = below
        self.missing = sorted(missing, key=lambda cid: cid.codec != CODEC_DAG_CBOR)
        self.waiting = sum(1 for cid in missing if cid.codec == CODEC_DAG_CBOR)
        self.structured = trio.Event()
        if not self.waiting:
            self.structured.set()


class _Copy:
    """One writer's copy in progress: the wants of each level (each with its read auth, made
    as the fetch reads it), the checks of what arrives, and the batches it is stored in."""

    def __init__(
        self,
        mirrors: Mirrors,
        home: str,
        state: MirrorState,
        budget: list[int],
        batches: trio.MemorySendChannel[list[tuple[CID, bytes]]],
    ) -> None:
        self.node = mirrors.node
        self.home_id = home
        self.home = home.encode()
        self.state = state
        self.budget = budget
        self.batches = batches
        self.pending: list[tuple[CID, bytes]] = []
        self.pending_bytes = 0
        self.cut = False  # wants were left out: the budget ran out

    async def fetch(self, level: _Level) -> None:
        assert self.node.network is not None

        async def receive(cid: CID, data: bytes) -> None:
            await self.receive(level, cid, data)

        try:
            await self.node.network.fetch_many(self.home_id, self.wants(level.missing), receive)
        finally:
            level.structured.set()  # also when the budget left some out

    def wants(self, missing: list[CID]) -> Iterator[tuple[CID, bats.ReadAuth | None]]:
        me = self.node.node_id_bytes
        for cid in missing:
            if self.budget[0] <= 0:
                self.cut = True
                return  # the round's share is spent: what is in flight still lands
            now = int(self.node.clock())
            yield cid, bats.make_read_auth(self.state.secret, cid, me, self.home, now, hashed=True)

    async def receive(self, level: _Level, cid: CID, data: bytes) -> None:
        if cid.codec == CODEC_DAG_CBOR:
            try:
                check_structured(data)
                level.below.extend(structured_links(data))
            except (MalformedInput, TooLarge) as exc:
                raise Corrupted(
                    f"the home sent block {cid}, which is not a known structured block"
                ) from exc
            level.waiting -= 1
            if level.waiting == 0:
                level.structured.set()
        self.budget[0] -= len(data)
        self.pending.append((cid, data))
        self.pending_bytes += len(data)
        self.node.stats["mirror_blocks"] += 1
        self.node.stats["mirror_bytes"] += len(data)
        if self.pending_bytes >= STORE_BATCH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        """Hand what arrived to the storing task (waits while it writes the batch before)."""
        if self.pending:
            blocks, self.pending, self.pending_bytes = self.pending, [], 0
            await self.batches.send(blocks)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first PyrgosError in a nursery's group (the group itself when there is none)."""
    for error in group.exceptions:
        found = _first_error(error) if isinstance(error, BaseExceptionGroup) else error
        if isinstance(found, PyrgosError):
            return found
    return group
