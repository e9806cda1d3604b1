"""Blocks and quota: block put and get, CHAMP lookups, uploads, and the usage records a quota is
checked against. Owns Space.BLOCKS, BLOCK_INDEX, UPLOADS, USAGE and STORED.

USAGE record (per owner): CBOR {reachable, added, quota}; UPLOADS: upload id -> [owner, expiry]
and upload id ‖ CID -> b"" (pins); STORED: node/server/_gc.py.
"""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Final

from node import threads
from node.server._gc import reachable_bytes, stored_key, stored_record
from node.store import Batch, DiskFull, Space, Store
from protocols import accounts, bats, cbor, champ
from protocols.blocks import verify_put
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW
from protocols.crypto import VerifyKey
from protocols.errors import Corrupted, Denied, InvalidSignature, NotFound, QuotaExceeded
from protocols.methods import (
    BlockGet,
    BlockGetReply,
    BlockPut,
    BlockPutReply,
    ChampGet,
    ChampGetReply,
    UsageGet,
    UsageGetReply,
)
from protocols.structured import check_structured

if TYPE_CHECKING:
    from node.server._service import NodeService

log = logging.getLogger(__name__)

# An exact recount (a mark of the user's tree) may take at most this share of the time; the
# running count, which only overstates, decides in between.
RECOUNT_SHARE: Final = 0.1
UPLOAD_TTL: Final = 3600  # seconds an upload stays pinned after its last block


class StoreBlocks:
    """The node's blocks as a CHAMP block source."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self, cid: CID) -> bytes:
        return stored_block(self._store, cid)


def stored_block(store: Store, cid: CID) -> bytes:
    """A stored block. A structured block is checked against its CID first, since the node
    parses it (for its BATs, its links); a fragment is only passed on (its BAT sits in a fixed
    raw prefix) and its reader checks its hash, so the node neither hashes a megabyte it only
    serves nor has LevelDB check its CRC: damage on disk shows as a mismatch at the reader."""
    data = store.get_block(cid.raw, checked=cid.codec != CODEC_RAW)
    if data is None:
        raise NotFound(f"block {cid} is not stored here")
    if cid.codec != CODEC_RAW and not cid.matches(data):
        log.error("block %s does not match its hash in the store", cid)
        raise Corrupted(f"block {cid} is corrupt in this node's store")
    return data


def validate_blocks(
    writer: CID, blocks: tuple[tuple[int, bytes], ...], sigs: tuple[bytes, ...]
) -> list[tuple[CID, bytes]]:
    """The blocks of a put (shapes and sizes already checked by protocols.methods): known
    structured shapes only, each signed by `writer`."""
    key = VerifyKey.from_key_hash(writer)
    out: list[tuple[CID, bytes]] = []
    for (codec, data), sig in zip(blocks, sigs, strict=True):
        if codec == CODEC_DAG_CBOR:
            # Only known, small shapes: a collection must decode them all cheaply.
            check_structured(data)
        cid = CID.of(codec, data)
        try:
            verify_put(key, cid, sig)
        except InvalidSignature as exc:
            raise InvalidSignature("a block is not signed by the writer it names") from exc
        out.append((cid, data))
    return out


def usage_record(reachable: int, added: int, quota: int) -> bytes:
    return cbor.encode({"reachable": reachable, "added": added, "quota": quota})


def close_uploads(store: Store, batch: Batch, uploads: tuple[bytes, ...]) -> None:
    """Unpin the blocks of finished uploads, in the batch that makes them reachable."""
    for upload in uploads:
        for key in list(store.keys(Space.UPLOADS, upload)):
            batch.delete(Space.UPLOADS, key)


class Blocks:
    """Block and CHAMP calls, and the quota of the users homed here."""

    def __init__(self, node: NodeService) -> None:
        self.node = node
        self.store = node.store
        self.source = StoreBlocks(node.store)
        self._counted: set[bytes] = set()  # owners counted exactly, no pointer moved since
        self._recount_due: dict[bytes, float] = {}  # owner -> earliest next exact count

    def pointer_moved(self, owner: CID) -> None:
        """Usage may have fallen: the next refused put counts again."""
        self._counted.discard(owner.raw)

    def forget_counts(self) -> None:
        self._counted.clear()

    async def get_block(
        self,
        cid: CID,
        auth: bats.ReadAuth | None,
        requester: bytes,
        owner: CID | None = None,
    ) -> bytes:
        """A block, if the auth allows it.

        A client reading data of a user homed elsewhere (`owner`) makes its auth out to that
        home, with this node as the requester. This node fetches such a block from the home
        (which checks the auth) and keeps it as a cached block no pointer here reaches, so GC
        may drop it; served again from the cache, the auth is checked as the home would.
        """
        node = self.node
        server, as_requester = node.node_id_bytes, requester
        home = await node.relay_home(owner, requester)
        if home is not None:
            server, as_requester = home.encode(), node.node_id_bytes
            network = node.network
            if not self.store.has_block(cid.raw) and network is not None and owner is not None:
                # The auth is the home's: a mirror of the owner takes it too (bats, rule 5).
                data = await node.failover(
                    home, owner, lambda source: network.fetch_block(source, cid, auth)
                )
                try:
                    with self.store.batch() as batch:
                        self.store.put_block(batch, cid.raw, data)
                except DiskFull:  # only a cache: the read does not depend on keeping it
                    node.stats["relayed_not_cached"] += 1
                node.stats["blocks_relayed"] += 1
                return data
        # Read inline: a worker thread hop contends for the GIL and costs more than the read.
        try:
            stored: bytes | None = stored_block(self.store, cid)
        except NotFound:
            stored = None
        block_ids = [] if stored is None else bats.block_bat_ids(cid, stored)
        if stored is not None and not block_ids:
            node.stats["blocks_served"] += 1
            return stored  # public: no auth needed, whatever came with the request
        if auth is not None:  # the auth's own checks (expiry, mac) do not depend on the block
            bats.check_read_auth(
                cid,
                [auth.bat_id],
                auth,
                requester=as_requester,
                server=server,
                now=int(node.clock()),
                mirror_secret=lambda bat_id: self.store.get(Space.BATS, bat_id),
                also=node.mirrors.homes_for(block_ids),
            )
        # Missing, or private and not the auth's: one answer, so that only a holder of one of
        # the block's BATs learns whether it is here (anyone can make a valid auth of a BAT of
        # their own, so a valid auth alone proves nothing).
        if (
            stored is None
            or auth is None
            or not any(hmac.compare_digest(auth.bat_id, i) for i in block_ids)
        ):
            raise NotFound(f"block {cid} is not stored here, or needs another read auth")
        node.stats["blocks_served"] += 1
        return stored

    def usage(self, owner: CID) -> tuple[int, int, int]:
        """(reachable at the last count, bytes added since, quota) of a local user."""
        raw = self.store.get(Space.USAGE, owner.raw)
        if raw is None:
            raise Denied("not a user homed on this node")
        value = cbor.decode(raw)
        return value["reachable"], value["added"], value["quota"]

    def _charge(self, owner: CID, extra: int) -> bytes:
        """The new usage record after storing `extra` bytes, or QuotaExceeded."""
        reachable, added, quota = self.usage(owner)
        clock = self.node.clock
        started = clock()
        if (
            reachable + added + extra > quota
            and owner.raw not in self._counted
            and started >= self._recount_due.get(owner.raw, started)
        ):
            # The running count only grows between collections: count exactly before refusing.
            # Usage falls only when a pointer moves (or at a collection), so one exact count
            # holds until then: refused puts in a row do not each mark the user's tree. A
            # user moving a pointer between puts still gets a recount at most RECOUNT_SHARE
            # of the time: the count holds every writer (it runs under the write lock).
            reachable, added = reachable_bytes(self.store, owner, int(started)), 0
            if self.node.collection is not None:
                self.node.collection.note_recount(owner)
            self._counted.add(owner.raw)
            ended = clock()
            self._recount_due[owner.raw] = ended + (ended - started) * (1 / RECOUNT_SHARE - 1)
            self.store.put(Space.USAGE, owner.raw, usage_record(reachable, 0, quota))
        if reachable + added + extra > quota:
            free = max(0, quota - reachable - added)
            raise QuotaExceeded(
                f"this write needs {extra} bytes but only {free} of the quota of {quota} "
                "bytes are free"
            )
        return usage_record(reachable, added + extra, quota)

    def _put_blocks_sync(
        self, owner: CID, blocks: list[tuple[CID, bytes]], upload: bytes | None
    ) -> None:
        unique = dict(blocks)
        fresh = [(c, d) for c, d in unique.items() if not self.store.has_block(c.raw)]
        # Every block a user puts counts for them until a collection decides it (it is then
        # reachable, pinned, or gone): a record of the put, in the batch that stores it.
        running = self.node.collection
        charged = [
            (c, d)
            for c, d in unique.items()
            if running is not None or not self.store.has(Space.STORED, stored_key(owner, c))
        ]
        extra = sum(len(d) for _, d in charged)
        usage = self._charge(owner, extra)
        now = int(self.node.clock())
        with self.store.batch() as batch:
            for cid, data in fresh:
                self.store.put_block(batch, cid.raw, data)
            for cid, data in charged:
                batch.put(Space.STORED, stored_key(owner, cid), stored_record(len(data)))
            if upload is not None:
                batch.put(Space.UPLOADS, upload, cbor.encode([owner, now + UPLOAD_TTL]))
                for cid, _ in blocks:
                    batch.put(Space.UPLOADS, upload + cid.raw, b"")
            batch.put(Space.USAGE, owner.raw, usage)
        if running is not None:
            running.note_put(owner, unique, extra)
        self.node.stats["blocks_stored"] += len(fresh)
        # Sent again though held: what a client's or a mirror's dedup could have saved.
        self.node.stats["blocks_duplicate"] += len(blocks) - len(fresh)

    # -- calls --------------------------------------------------------------------------------

    async def block_put(self, request: BlockPut, requester: bytes) -> BlockPutReply:
        owner = request.owner
        blocks = await threads.run_sync(
            validate_blocks, request.writer, request.blocks, request.sigs
        )
        if self.node.pointers.owner_of(request.writer) != owner:
            raise Denied("this writer does not belong to that owner")
        if request.writer == owner:  # a sub-writer's puts are authorised by its signatures
            self.node.accounts.check_session(owner, request.session)
        async with self.node.write_lock:
            await threads.run_sync(self._put_blocks_sync, owner, blocks, request.upload)
        return BlockPutReply(tuple(cid for cid, _ in blocks))

    async def block_get(self, request: BlockGet, requester: bytes) -> BlockGetReply:
        return BlockGetReply(
            await self.get_block(request.cid, request.auth, requester, request.owner)
        )

    async def champ_get(self, request: ChampGet, requester: bytes) -> ChampGetReply:
        self.node.stats["champ_lookups"] += 1
        keys = list(request.keys)
        bound = champ.MAX_PATH_NODES * len(keys)  # a map built as deep chains stays cheap
        blocks = await champ.lookup_blocks(self.source, request.root, keys, max_nodes=bound)
        return ChampGetReply(tuple(blocks))

    async def usage_get(self, request: UsageGet, requester: bytes) -> UsageGetReply:
        owner = request.owner
        accounts.check_timed(
            VerifyKey.from_key_hash(owner),
            accounts.USAGE,
            [owner],
            request.time,
            request.sig,
            int(self.node.clock() * 1000),
        )
        self.node.accounts.check_session(owner, request.session)
        reachable, added, quota = self.usage(owner)
        return UsageGetReply(reachable + added, quota)
