"""The node's method table: every call a client (or, later, another node) can make.

Arguments and results are CBOR values. Writes are serialised by one lock and applied in one
LevelDB batch each, so a refused call changes nothing. Blocking store work runs in a worker
thread so the event loop keeps serving.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import trio

from node.server import _links, _social, _writers
from node.server._gc import Collection, reachable_bytes, stored_key, stored_record
from node.server._pki import PkiLog, SyncResult
from node.store import Batch, DiskFull, Space, Store, owner_prefix
from protocols import accounts, bats, cbor, champ
from protocols.blocks import MAX_BLOCKS_PER_PUT, verify_put
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW
from protocols.crypto import KdfParams, VerifyKey
from protocols.cryptree import MAX_BLOCK_BYTES
from protocols.errors import (
    AuthFailed,
    Conflict,
    Corrupted,
    Denied,
    InvalidName,
    InvalidSignature,
    MalformedInput,
    NotFound,
    PyrgosError,
    QuotaExceeded,
    RateLimited,
    TooLarge,
    Unavailable,
)
from protocols.names import check_username
from protocols.pki import (
    RETRY_FIRST,
    Claim,
    DailyLimit,
    NodeRecord,
    Record,
    SyncHealth,
    check_submission,
    record_from_cbor,
    record_to_cbor,
)
from protocols.pointers import PointerUpdate, check_update
from protocols.structured import check_structured
from protocols.writerdata import WriterData, controller_of

log = logging.getLogger(__name__)

MAX_PUT_BYTES: Final = 8 * 1024 * 1024 + 64 * 1024
MAX_CHAMP_KEYS: Final = 64
UPLOAD_ID_BYTES: Final = 16
# An exact recount (a mark of the user's tree) may take at most this share of the time; the
# running count, which only overstates, decides in between.
RECOUNT_SHARE: Final = 0.1
UPLOAD_TTL: Final = 3600  # seconds an upload stays pinned after its last block
GiB: Final = 1024**3

Args = dict[str, Any]
Handler = Callable[["NodeService", Args, bytes], Awaitable[Any]]


class Network(Protocol):
    """How a node reaches the others: libp2p in a running node, anything in tests."""

    async def call(self, node_id: str, method: str, args: dict[str, Any]) -> Any:
        """Call `method` on node `node_id` (requester: this node) and return its result."""
        ...

    async def fetch_block(self, node_id: str, cid: CID, auth: bats.ReadAuth | None) -> bytes:
        """A block from node `node_id`, checked against `cid`."""
        ...


# The calls that belong to a user's home node, and the argument that names the user: a node
# that receives one for a user homed elsewhere forwards it there and relays the answer.
PKI_PAGE: Final = 1000  # entries per PKI sync request
PKI_SYNC_TIMEOUT: Final = 10  # seconds an on-demand PKI sync may take
# At the PKI node: nodes that join a day (a node id costs nothing to make, so their records
# are capped), records a known node publishes a day (one per start), and updates a day of one
# username's claim (a renewal each login near expiry, a move of home now and then).
NEW_NODES_PER_DAY: Final = 100
NODE_RECORDS_PER_DAY: Final = 100
CLAIM_UPDATES_PER_DAY: Final = 10
# Who is calling, for per-source limits: the client's address over HTTP, the peer id that
# Noise authenticated over libp2p; set by `call` for the call's task.
_SOURCE: contextvars.ContextVar[str] = contextvars.ContextVar("source", default="")
HOME_ARGUMENT: Final = {
    "block.put": "owner",
    "pointer.get": "owner",
    "pointer.cas": "owner",
    "champ.get": "owner",
    "usage.get": "owner",
    "account.params": "username",
    "account.login": "username",
    "account.update": "username",
    "session.end": "owner",
    "session.check": "owner",
    # issue 8: the follow-request inbox and secret links
    "social.send": "target",
    "social.list": "owner",
    "social.remove": "owner",
    "link.get": "owner",
}
# The calls that prove a password: failures are throttled (protocols.accounts.LoginThrottle).
# issue 8: a wrong link proof (a password guess) and an unknown label count like a failed login.
THROTTLED: Final = frozenset({"account.login", "account.update", "link.get"})
SOURCE_FREE_FAILURES: Final = 20  # one address or peer may carry many users' logins


@dataclass(frozen=True)
class NodeSettings:
    node_id: str
    test_mode: bool = False
    default_quota: int = GiB
    admin_token: str = ""  # empty: maintenance calls are refused
    addrs: tuple[str, ...] = ()  # this node's full multiaddrs, once listening
    # Names a node may add to the PKI a day: its own signups, and at the PKI node also each
    # other node's new claims. A home server's users sign up by the handful.
    max_daily_signups: int = 100
    max_source_signups: int = 10  # signups a day from one client address or peer
    signup_token: str = ""  # when set, signup presents it (and is then not limited per source)


def _arg(args: Args, name: str, kind: type | tuple[type, ...]) -> Any:
    value = args.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise MalformedInput(f"argument {name!r} is missing or of the wrong type")
    return value


def _key_hash_arg(args: Args, name: str) -> CID:
    value: CID = _arg(args, name, CID)
    if not value.is_identity or value.codec != CODEC_DAG_CBOR:
        raise MalformedInput(f"argument {name!r} must be a public-key hash")
    return value


def _username_arg(args: Args) -> str:
    name: str = _arg(args, "username", str)
    if len(name) > 64:
        raise InvalidName("usernames are at most 32 characters")
    return name


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


@dataclass(frozen=True)
class _Signup:
    """A signup that passed every check of this node, ready to claim and store."""

    claim: Claim
    blocks: list[tuple[CID, bytes]]
    account: bytes
    mirror_bat: bytes
    pointer: PointerUpdate
    size: int


class NodeService:
    """One node's state and rules; transports call `call`."""

    def __init__(
        self,
        store: Store,
        settings: NodeSettings,
        network: Network | None = None,
        pki: PkiLog | None = None,
        *,
        clock: Callable[[], float] = time.time,
        random: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.store = store
        self.clock = clock  # seconds since the epoch; virtual in tests
        self._random = random
        self._user_logins = accounts.LoginThrottle()
        self._source_logins = accounts.LoginThrottle(free=SOURCE_FREE_FAILURES)
        self.settings = settings
        self.network = network
        self.pki = pki
        self._pki_sync = trio.Lock()
        self.pki_health = SyncHealth()  # how this mirror reaches its PKI node (`pki status`)
        # Signups here, and appends at the PKI node: what a stranger can add to the PKI.
        self._signups = DailyLimit(settings.max_daily_signups)
        self._source_signups = DailyLimit(settings.max_source_signups)
        self._home_claims = DailyLimit(settings.max_daily_signups)
        self._new_nodes = DailyLimit(NEW_NODES_PER_DAY)
        self._node_records = DailyLimit(NODE_RECORDS_PER_DAY)
        self._claim_updates = DailyLimit(CLAIM_UPDATES_PER_DAY)
        self._signing_up: set[str | CID] = set()  # names and keys of signups under way
        self.stats: Counter[str] = Counter()
        self._write_lock = trio.Lock()
        self._gc_lock = trio.Lock()  # one collection at a time
        self._collection: Collection | None = None  # the running one, told of every write
        self._counted: set[bytes] = set()  # owners counted exactly, no pointer moved since
        self._recount_due: dict[bytes, float] = {}  # owner -> earliest next exact count
        self._blocks = StoreBlocks(store)
        self.inbox = _social.Inbox(store)  # issue 8: follow requests (node/server/_social.py)

    @property
    def node_id_bytes(self) -> bytes:
        return self.settings.node_id.encode()

    async def call(
        self, method: str, args: Any, requester: bytes = b"", *, source: str | None = None
    ) -> Any:
        """Dispatch one call; raises a PyrgosError the transport turns into an error reply.

        `requester` is the calling node's peer id (empty from a client over HTTP), `source`
        the HTTP client's address. Per-source limits (signups, failed logins) count the
        caller: the peer id when there is one, else the address.
        """
        caller = f"peer:{requester.hex()}" if requester else f"addr:{source or ''}"
        _SOURCE.set(caller)
        entry = METHODS.get(method)
        if entry is None:
            raise NotFound(f"unknown method {method!r}")
        if not isinstance(args, dict):
            raise MalformedInput("call arguments must be a CBOR map")
        self.stats["calls"] += 1
        home = await self._foreign_home(method, args, requester)
        if method not in THROTTLED:
            return await self._dispatch(entry, home, method, args, requester)
        # Per source wherever the call arrives, per username at the user's home only.
        sources = [caller]
        user = args.get("username")
        users = [f"user:{user}"] if home is None and isinstance(user, str) else []
        try:
            self._source_logins.check(sources, self.clock(), "from this address")
            self._user_logins.check(users, self.clock(), "for this user")
        except RateLimited:
            self.stats["logins_throttled"] += 1
            raise
        try:
            result = await self._dispatch(entry, home, method, args, requester)
        except AuthFailed:
            self._source_logins.failed(sources, self.clock())
            self._user_logins.failed(users, self.clock())
            raise
        except NotFound:  # an unknown username: probing counts against the source
            self._source_logins.failed(sources, self.clock())
            raise
        self._user_logins.succeeded(users)
        return result

    async def _dispatch(
        self, entry: Handler, home: str | None, method: str, args: Args, requester: bytes
    ) -> Any:
        if home is not None and self.network is not None:
            self.stats["forwarded"] += 1
            return await self.network.call(home, method, args)
        return await entry(self, args, requester)

    async def _foreign_home(self, method: str, args: Args, requester: bytes) -> str | None:
        """The home node of the user a call belongs to, when that is another node.

        Calls that came from another node are never forwarded again, so a stale PKI view
        cannot bounce a call between nodes.
        """
        name = HOME_ARGUMENT.get(method)
        if name is None or requester or self.network is None:
            return None
        return await self._home_elsewhere(args.get(name))

    async def _home_elsewhere(self, user: object) -> str | None:
        """The home of a user (owner key hash or username) when it is not this node; a mirror
        that does not know the user yet pulls new PKI entries once before answering."""
        if isinstance(user, CID) and user.is_identity:
            if self.store.has(Space.WRITERS, user.raw):
                return None
            home = self.home_of_identity(user)
        elif isinstance(user, str) and len(user) <= 64:
            if self.store.has(Space.ACCOUNTS, user.encode()):
                return None
            home = self.home_of_username(user)
        else:
            return None
        if home is None and self.pki is not None and self.pki.role == "mirror":
            await self._sync_on_demand()
            home = (
                self.home_of_identity(user)
                if isinstance(user, CID)
                else self.home_of_username(user)
            )
        return None if home in (None, self.settings.node_id) else home

    # -- blocks -------------------------------------------------------------------------

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
        server, as_requester = self.node_id_bytes, requester
        home = await self._relay_home(owner, requester)
        if home is not None:
            server, as_requester = home.encode(), self.node_id_bytes
            if not self.store.has_block(cid.raw) and self.network is not None:
                data = await self.network.fetch_block(home, cid, auth)
                try:
                    with self.store.batch() as batch:
                        self.store.put_block(batch, cid.raw, data)
                except DiskFull:  # only a cache: the read does not depend on keeping it
                    self.stats["relayed_not_cached"] += 1
                self.stats["blocks_relayed"] += 1
                return data
        # Read inline: a worker thread hop contends for the GIL and costs more than the read.
        try:
            stored: bytes | None = stored_block(self.store, cid)
        except NotFound:
            stored = None
        block_ids = [] if stored is None else bats.block_bat_ids(cid, stored)
        if stored is not None and not block_ids:
            self.stats["blocks_served"] += 1
            return stored  # public: no auth needed, whatever came with the request
        if auth is not None:  # the auth's own checks (expiry, mac) do not depend on the block
            bats.check_read_auth(
                cid,
                [auth.bat_id],
                auth,
                requester=as_requester,
                server=server,
                now=int(self.clock()),
                mirror_secret=lambda bat_id: self.store.get(Space.BATS, bat_id),
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
        self.stats["blocks_served"] += 1
        return stored

    async def _relay_home(self, owner: CID | None, requester: bytes) -> str | None:
        """The home of `owner` when this node reads on a client's behalf for a foreign user."""
        if owner is None or requester or self.network is None:
            return None
        return await self._home_elsewhere(owner)

    def _owner_of(self, writer: CID) -> CID:
        owner = self.store.get(Space.WRITERS, writer.raw)
        if owner is None:
            raise Denied("this writer does not belong to a user homed on this node")
        return CID.from_bytes(owner)

    def _validate_blocks(self, writer: CID, items: Any, sigs: Any) -> list[tuple[CID, bytes]]:
        if not isinstance(items, list) or not isinstance(sigs, list) or len(items) != len(sigs):
            raise MalformedInput("blocks and sigs must be lists of the same length")
        if len(items) > MAX_BLOCKS_PER_PUT:
            raise TooLarge(f"at most {MAX_BLOCKS_PER_PUT} blocks per put")
        key = VerifyKey.from_key_hash(writer)
        out: list[tuple[CID, bytes]] = []
        for item, sig in zip(items, sigs, strict=True):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], bytes)):
                raise MalformedInput("each block is [codec, bytes]")
            codec, data = item
            if codec not in (CODEC_RAW, CODEC_DAG_CBOR):
                raise MalformedInput("blocks are raw or dag-cbor")
            if len(data) > MAX_BLOCK_BYTES:
                raise TooLarge(f"a block is at most {MAX_BLOCK_BYTES} bytes")
            if codec == CODEC_DAG_CBOR:
                # Only known, small shapes: a collection must decode them all cheaply.
                check_structured(data)
            cid = CID.of(codec, data)
            if not isinstance(sig, bytes):
                raise MalformedInput("block signatures must be bytes")
            try:
                verify_put(key, cid, sig)
            except InvalidSignature as exc:
                raise InvalidSignature("a block is not signed by the writer it names") from exc
            out.append((cid, data))
        return out

    def _usage(self, owner: CID) -> tuple[int, int, int]:
        """(reachable at the last count, bytes added since, quota) of a local user."""
        raw = self.store.get(Space.USAGE, owner.raw)
        if raw is None:
            raise Denied("not a user homed on this node")
        value = cbor.decode(raw)
        return value["reachable"], value["added"], value["quota"]

    def _usage_record(self, reachable: int, added: int, quota: int) -> bytes:
        return cbor.encode({"reachable": reachable, "added": added, "quota": quota})

    def _charge(self, owner: CID, extra: int) -> bytes:
        """The new usage record after storing `extra` bytes, or QuotaExceeded."""
        reachable, added, quota = self._usage(owner)
        started = self.clock()
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
            if self._collection is not None:
                self._collection.note_recount(owner)
            self._counted.add(owner.raw)
            ended = self.clock()
            self._recount_due[owner.raw] = ended + (ended - started) * (1 / RECOUNT_SHARE - 1)
            self.store.put(Space.USAGE, owner.raw, self._usage_record(reachable, 0, quota))
        if reachable + added + extra > quota:
            free = max(0, quota - reachable - added)
            raise QuotaExceeded(
                f"this write needs {extra} bytes but only {free} of the quota of {quota} "
                "bytes are free"
            )
        return self._usage_record(reachable, added + extra, quota)

    def _put_blocks_sync(
        self, owner: CID, blocks: list[tuple[CID, bytes]], upload: bytes | None
    ) -> None:
        unique = dict(blocks)
        fresh = [(c, d) for c, d in unique.items() if not self.store.has_block(c.raw)]
        # Every block a user puts counts for them until a collection decides it (it is then
        # reachable, pinned, or gone): a record of the put, in the batch that stores it.
        running = self._collection
        charged = [
            (c, d)
            for c, d in unique.items()
            if running is not None or not self.store.has(Space.STORED, stored_key(owner, c))
        ]
        extra = sum(len(d) for _, d in charged)
        usage = self._charge(owner, extra)
        now = int(self.clock())
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
        self.stats["blocks_stored"] += len(fresh)

    async def block_put(self, args: Args, requester: bytes) -> list[CID]:
        owner = _key_hash_arg(args, "owner")
        writer = _key_hash_arg(args, "writer")
        upload = args.get("upload")
        if upload is not None and (not isinstance(upload, bytes) or len(upload) != 16):
            raise MalformedInput("upload must be 16 bytes")
        blocks = await trio.to_thread.run_sync(
            self._validate_blocks, writer, args.get("blocks"), args.get("sigs")
        )
        if self._owner_of(writer) != owner:
            raise Denied("this writer does not belong to that owner")
        if writer == owner:  # issue 8: a sub-writer's puts are authorised by its signatures
            self._check_session(owner, args)
        async with self._write_lock:
            await trio.to_thread.run_sync(self._put_blocks_sync, owner, blocks, upload)
        return [cid for cid, _ in blocks]

    # -- pointers -----------------------------------------------------------------------

    def _pointer(self, writer: CID) -> PointerUpdate | None:
        raw = self.store.get(Space.POINTERS, writer.raw)
        return None if raw is None else PointerUpdate.decode(raw)

    def _check_pointer(self, writer: CID, update: PointerUpdate) -> None:
        target = self.store.get_block(update.new.raw)
        check_update(
            VerifyKey.from_key_hash(writer),
            self._pointer(writer),
            update,
            None if target is None else controller_of(target),
        )

    async def pointer_cas(self, args: Args, requester: bytes) -> bool:
        owner = _key_hash_arg(args, "owner")
        updates = _arg(args, "updates", list)
        uploads = args.get("uploads", [])
        if not updates or len(updates) > 16:
            raise MalformedInput("updates must be a list of 1-16 [writer, update] pairs")
        parsed: list[tuple[CID, PointerUpdate]] = []
        for item in updates:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], bytes)):
                raise MalformedInput("each update is [writer, signed update bytes]")
            writer = item[0]
            if not isinstance(writer, CID) or not writer.is_identity:
                raise MalformedInput("writer must be a public-key hash")
            parsed.append((writer, PointerUpdate.decode(item[1])))
        if len({w for w, _ in parsed}) != len(parsed):
            raise MalformedInput("one update per writer")
        async with self._write_lock:
            # issue 8: owner proofs of the identity root first, then the other writers
            registered = _writers.check_updates(
                self.store, owner, parsed, self._check_pointer, self._pointer
            )
            if registered.identity:  # a sub-writer's commit is authorised by its signatures
                self._check_session(owner, args)
            with self.store.batch(sync=True) as batch:  # durable before the reply
                for writer, update in parsed:
                    batch.put(Space.POINTERS, writer.raw, update.encode())
                registered.apply(batch)
                self._close_uploads(batch, uploads)
            self._counted.discard(owner.raw)
            if self._collection is not None:
                for _, update in parsed:
                    self._collection.note_root(owner, update.new)
        return True

    def _close_uploads(self, batch: Batch, uploads: object) -> None:
        """Unpin the blocks of finished uploads, in the batch that makes them reachable."""
        if not isinstance(uploads, list) or len(uploads) > 16:
            raise MalformedInput("uploads must be a list of at most 16 upload ids")
        for upload in uploads:
            if isinstance(upload, bytes) and len(upload) == UPLOAD_ID_BYTES:
                for key in list(self.store.keys(Space.UPLOADS, upload)):
                    batch.delete(Space.UPLOADS, key)

    # -- accounts -----------------------------------------------------------------------

    def _account(self, username: str) -> dict[str, Any]:
        raw = self.store.get(Space.ACCOUNTS, username.encode())
        if raw is None:
            raise NotFound(f"unknown user {username!r}")
        value: dict[str, Any] = cbor.decode(raw, limit=64 * 1024)
        return value

    def _log(self) -> PkiLog:
        if self.pki is None:
            raise Unavailable("this node keeps no PKI log")
        return self.pki

    def _claim(self, username: str) -> Claim:
        claim = self._log().lookup(username)
        if claim is None:
            raise NotFound(f"unknown user {username!r}")
        return claim

    async def _claim_synced(self, username: str) -> Claim:
        """The claim for `username`, pulling new PKI entries first when this mirror lacks it."""
        if self._log().lookup(username) is None and self._log().role == "mirror":
            await self._sync_on_demand()
        return self._claim(username)

    async def _submit(self, record: Record, submitter: str) -> dict[str, Any]:
        """Have a PKI record appended: here on the PKI node (if `submitter` may have it
        appended, see `_admit`), else there (then pull it). From a mirror, the PKI node sees
        this node as the submitter."""
        pki = self._log()
        if pki.role == "root":
            release = self._admit(record, submitter)
            try:
                entry = await trio.to_thread.run_sync(pki.append, record)
            except BaseException:
                release()
                raise
            return {"seq": entry.seq, "hash": entry.hash}
        if self.network is None:
            raise Unavailable("this node cannot reach its PKI node")
        reply: dict[str, Any] = await self.network.call(
            pki.pki_node, "pki.submit", {"record": record_to_cbor(record)}
        )
        # It answered: pull at once (a backoff from an earlier failure must not leave the
        # record just appended unknown here, as a signup's first command would find it).
        self.pki_health.succeeded(self.clock())
        await self._sync_on_demand()
        return reply

    def _admit(self, record: Record, submitter: str) -> Callable[[], None]:
        """At the PKI node: refuse what `submitter` may not have appended (protocols.pki
        `check_submission`) and count it against the daily limits; returns what gives the
        count back if the append fails. A record already held is answered, never counted."""
        pki = self._log()
        check_submission(pki.index, record, submitter, pki.pki_node)
        now = self.clock()
        if pki.holds(record):
            return lambda: None
        if isinstance(record, NodeRecord):
            if record.node == pki.pki_node:
                return lambda: None
            known = pki.node_record(record.node) is not None
            limit, key = (self._node_records, record.node) if known else (self._new_nodes, "")
            limit.take(key, now, "node records")
        else:
            current = pki.lookup(record.username)
            owned = current is not None and current.identity in (record.identity, record.previous)
            if owned:
                limit, key = self._claim_updates, record.username
                limit.take(key, now, f"updates of the claim of {record.username!r}")
            else:
                limit, key = self._home_claims, record.home
                limit.take(key, now, f"new names homed on node {record.home}")
        return lambda: limit.give_back(key)

    async def publish(self, record: NodeRecord) -> None:
        """Put this node's record (its addresses) in the PKI."""
        await self._submit(record, self.settings.node_id)

    async def sync_pki(self) -> SyncResult | None:
        """Pull and apply new entries from the PKI node until caught up (mirrors only).

        Never re-entered: a pull whose call fails may ask for a sync again (to learn new
        addresses) from inside this one, and that inner request returns None at once. Every
        pull is recorded in `pki_health`, success or error, and errors are raised.
        """
        pki = self._log()
        if pki.role == "root" or self.network is None:
            return None
        if self._pki_sync.statistics().owner is trio.lowlevel.current_task():
            return None
        async with self._pki_sync:
            try:
                while True:
                    page = await self.network.call(
                        pki.pki_node, "pki.entries", {"after": pki.seq(), "limit": PKI_PAGE}
                    )
                    if not isinstance(page, dict):
                        raise MalformedInput("the PKI node sent a malformed page")
                    result = await trio.to_thread.run_sync(
                        pki.apply_from_mirror, page.get("entries"), page.get("head")
                    )
                    if result.refusal is not None or result.applied == 0:
                        self.pki_health.succeeded(self.clock())
                        return result
            except PyrgosError as exc:
                self.pki_health.failed(self.clock(), exc.message)
                raise

    async def pull_pki(self) -> None:
        """`sync_pki` for callers that go on whatever happens: a failure is logged and kept in
        `pki_health` (a fault in this node's own code too), never raised."""
        try:
            await self.sync_pki()
        except PyrgosError as exc:
            log.warning("PKI sync failed: %s", exc.message)
        except Exception:
            log.exception("PKI sync failed")
            self.pki_health.failed(self.clock(), "internal error (see the node's log)")

    async def _sync_on_demand(self) -> None:
        """Pull new PKI entries before answering from the local copy; a PKI node that is away
        (recorded in `pki_health`) leaves the answer to what this node already holds. While
        it is away, lookups of unknown names try it at most once per RETRY_FIRST seconds:
        strangers' lookups cannot turn a mirror into a dialler of its PKI node."""
        health = self.pki_health
        if (
            health.failures
            and health.last_error_time is not None
            and self.clock() - health.last_error_time < RETRY_FIRST
        ):
            return
        with trio.move_on_after(PKI_SYNC_TIMEOUT) as scope:
            # Never the caller's failure: a signup whose claim the PKI took must not fail.
            await self.pull_pki()
        if scope.cancelled_caught:
            self.pki_health.failed(
                self.clock(), f"the PKI node did not answer within {PKI_SYNC_TIMEOUT} s"
            )

    def _check_kdf(self, params: KdfParams) -> None:
        if not params.is_production_strength and not self.settings.test_mode:
            raise Denied("this node refuses the small KDF profile (it is not in test mode)")

    def _check_login_data(self, data: object) -> bytes:
        if not isinstance(data, bytes) or len(data) > accounts.MAX_LOGIN_DATA:
            raise MalformedInput("login data must be at most 16 KiB of bytes")
        return data

    def _check_signup(self, args: Args) -> _Signup:
        """Every check of a signup but the PKI's verdict, before anything is claimed or stored:
        a signup the node would refuse must never leave its name claimed (all or nothing)."""
        claim = Claim.from_cbor(args.get("claim"))
        claim.verify()
        if claim.home != self.settings.node_id:
            raise Denied("the claim names another home node")
        if claim.previous is not None:
            raise MalformedInput("a signup claims a name with a new key, not a key change")
        owner = claim.identity
        login_key = VerifyKey.from_cbor(args.get("login_key"))
        login_data = self._check_login_data(args.get("login_data"))
        mirror_bat = _arg(args, "mirror_bat", bytes)
        bats.hashed_id(mirror_bat)  # checks the length
        update = PointerUpdate.decode(_arg(args, "pointer", bytes))
        blocks = self._validate_blocks(owner, args.get("blocks"), args.get("sigs"))
        staged = dict(blocks)
        if update.new not in staged:
            raise MalformedInput("the first pointer must name the WriterData sent with the signup")
        writer_data = WriterData.decode(staged[update.new])
        if writer_data.login is None:
            raise MalformedInput("the identity WriterData must publish its login parameters")
        if writer_data.owned:  # sub-writers are registered by a later pointer.cas
            raise MalformedInput("a new account owns no other writers yet")
        self._check_kdf(writer_data.login)
        check_update(VerifyKey.from_key_hash(owner), None, update, writer_data.controller)
        size = sum(len(d) for d in staged.values())
        if size > self.settings.default_quota:
            raise QuotaExceeded("the initial blocks exceed the quota")
        if self.store.has(Space.WRITERS, owner.raw):
            raise Conflict("this identity key is already registered")
        if self.store.has(Space.ACCOUNTS, claim.username.encode()):
            raise Conflict(f"the username {claim.username!r} is taken")
        account = cbor.encode(
            {"identity": owner, "login_key": login_key.to_cbor(), "data": login_data}
        )
        return _Signup(claim, blocks, account, mirror_bat, update, size)

    def _take_signup(self, args: Args, source: str) -> Callable[[], None]:
        """The signup token and the daily limits (per node, and per source unless the token
        was presented); returns what gives the counts back if the signup fails."""
        token = args.get("token")
        expected = self.settings.signup_token
        invited = bool(expected) and isinstance(token, str)
        if expected and not (
            invited and secrets.compare_digest(str(token).encode(), expected.encode())
        ):
            raise Denied("this node signs up only with its signup token: ask its operator")
        now = self.clock()
        self._signups.take("", now, "signups on this node")
        if not invited:
            try:
                self._source_signups.take(source, now, "signups from one address")
            except RateLimited:
                self._signups.give_back("")
                raise

        def give_back() -> None:
            self._signups.give_back("")
            if not invited:
                self._source_signups.give_back(source)

        return give_back

    async def signup(self, args: Args, requester: bytes) -> bool:
        source = _SOURCE.get()
        signup = await trio.to_thread.run_sync(self._check_signup, args)
        claim, owner = signup.claim, signup.claim.identity
        if claim.username in self._signing_up or owner in self._signing_up:
            raise Conflict(f"a signup for {claim.username!r} or this key is already under way")
        give_back = self._take_signup(args, source)
        self._signing_up |= {claim.username, owner}
        try:
            # The PKI decides first (first come, first served, at the PKI node): a loser
            # writes nothing here. Nothing after it can refuse: all was checked above, and
            # the names and key under way are held against concurrent signups.
            await self._submit(claim, self.settings.node_id)
            async with self._write_lock:
                with self.store.batch(sync=True) as batch:
                    for cid, data in signup.blocks:
                        self.store.put_block(batch, cid.raw, data)
                    batch.put(Space.ACCOUNTS, claim.username.encode(), signup.account)
                    batch.put(Space.WRITERS, owner.raw, owner.raw)
                    batch.put(Space.BATS, bats.hashed_id(signup.mirror_bat), signup.mirror_bat)
                    batch.put(Space.POINTERS, owner.raw, signup.pointer.encode())
                    batch.put(
                        Space.USAGE,
                        owner.raw,
                        self._usage_record(signup.size, 0, self.settings.default_quota),
                    )
        except BaseException:
            give_back()
            raise
        finally:
            self._signing_up -= {claim.username, owner}
        log.info("signed up a user")
        return True

    async def login_params(self, args: Args, requester: bytes) -> dict[str, Any]:
        username = _username_arg(args)
        claim = self._claim(username)
        pointer = self._pointer(claim.identity)
        if pointer is None:
            raise NotFound(f"user {username!r} has no root")
        writer_data = WriterData.decode(await self._blocks.get(pointer.new))
        if writer_data.login is None:
            raise NotFound(f"user {username!r} publishes no login parameters")
        return {"identity": claim.identity, "params": writer_data.login.to_cbor()}

    async def login(self, args: Args, requester: bytes) -> dict[str, Any]:
        """The sealed login data, for a signature by the login key, and a new session."""
        username = _username_arg(args)
        account = self._account(username)
        accounts.check_timed(
            VerifyKey.from_cbor(account["login_key"]),
            accounts.LOGIN,
            [username],
            _arg(args, "time", int),
            _arg(args, "sig", bytes),
            int(self.clock() * 1000),
        )
        with self.store.batch() as batch:  # a session lost to a crash only means a new login
            token, expiry = self._open_session(batch, account["identity"])
        return {"data": account["data"], "session": token, "expiry": expiry}

    async def update_login(self, args: Args, requester: bytes) -> dict[str, Any]:
        """Password change: new login key and data, and the identity root naming the new salt.

        Signed by the current login key, which only the current password derives (a device's
        session holds no password-derived secret). It ends every session of the user and opens
        one for the caller.
        """
        username = _username_arg(args)
        account = self._account(username)
        new_key = VerifyKey.from_cbor(args.get("login_key"))
        new_data = self._check_login_data(args.get("login_data"))
        pointer_bytes = _arg(args, "pointer", bytes)
        update = PointerUpdate.decode(pointer_bytes)
        owner: CID = account["identity"]
        accounts.check_timed(
            VerifyKey.from_cbor(account["login_key"]),
            accounts.UPDATE_LOGIN,
            [username, new_key.to_cbor(), new_data, pointer_bytes],
            _arg(args, "time", int),
            _arg(args, "sig", bytes),
            int(self.clock() * 1000),
        )
        async with self._write_lock:
            target = self.store.get_block(update.new.raw)
            params = WriterData.decode(target).login if target is not None else None
            if params is None:
                raise MalformedInput("the new identity root must publish the new login parameters")
            self._check_kdf(params)
            self._check_pointer(owner, update)
            registered = _writers.registration(self.store, owner, self._pointer(owner), update.new)
            account["login_key"] = new_key.to_cbor()
            account["data"] = new_data
            with self.store.batch(sync=True) as batch:
                batch.put(Space.ACCOUNTS, username.encode(), cbor.encode(account))
                batch.put(Space.POINTERS, owner.raw, update.encode())
                registered.apply(batch)
                self._close_uploads(batch, args.get("uploads", []))
                self._end_sessions(batch, owner)
                token, expiry = self._open_session(batch, owner, ended_all=True)
        return {"session": token, "expiry": expiry}

    async def usage(self, args: Args, requester: bytes) -> dict[str, int]:
        owner = _key_hash_arg(args, "owner")
        accounts.check_timed(
            VerifyKey.from_key_hash(owner),
            accounts.USAGE,
            [owner],
            _arg(args, "time", int),
            _arg(args, "sig", bytes),
            int(self.clock() * 1000),
        )
        self._check_session(owner, args)
        reachable, added, quota = self._usage(owner)
        return {"used": reachable + added, "quota": quota}

    # -- sessions: what `logout` and a password change revoke -------------------------------

    def _open_session(
        self, batch: Batch, owner: CID, *, ended_all: bool = False
    ) -> tuple[bytes, int]:
        """A new session of `owner` (token, expiry), written in `batch`; expired sessions are
        dropped, and the oldest live ones past MAX_SESSIONS."""
        now = int(self.clock())
        prefix = owner_prefix(owner.raw)
        live: list[tuple[int, bytes]] = []
        for key, value in [] if ended_all else self.store.items(Space.SESSIONS, prefix):
            expiry = cbor.decode(value)
            if not isinstance(expiry, int) or expiry <= now:
                batch.delete(Space.SESSIONS, key)
            else:
                live.append((expiry, key))
        live.sort()
        for _, key in live[: max(0, len(live) - accounts.MAX_SESSIONS + 1)]:
            batch.delete(Space.SESSIONS, key)
        token = self._random(accounts.SESSION_TOKEN_BYTES)
        expiry = now + accounts.SESSION_LIFETIME
        batch.put(Space.SESSIONS, prefix + accounts.session_id(token), cbor.encode(expiry))
        return token, expiry

    def _end_sessions(self, batch: Batch, owner: CID) -> None:
        for key in list(self.store.keys(Space.SESSIONS, owner_prefix(owner.raw))):
            batch.delete(Space.SESSIONS, key)

    def _check_session(self, owner: CID, args: Args) -> int:
        """The expiry of the live session of `owner` whose token `args` carry, else Denied: a
        write needs the user's signatures and a session that logout or a password change can
        end."""
        token = args.get("session")
        if token is None:
            raise Denied("this call needs a session: log in (`pyrgos login USER`)")
        key = owner_prefix(owner.raw) + accounts.session_id(token)
        raw = self.store.get(Space.SESSIONS, key)
        expiry = None if raw is None else cbor.decode(raw)
        if not isinstance(expiry, int) or expiry <= int(self.clock()):
            raise Denied(
                "this device's session has ended (logged out, password changed or expired): "
                "log in again (`pyrgos login USER`)"
            )
        return expiry

    async def check_session(self, args: Args, requester: bytes) -> dict[str, int]:
        """Whether a device's saved session is still live, so that it learns at once, not at
        its next write, that it was logged out."""
        return {"expiry": self._check_session(_key_hash_arg(args, "owner"), args)}

    async def end_session(self, args: Args, requester: bytes) -> bool:
        """Logout: end this session (its token is the proof), or with `all` every session of
        the user (a live token is the proof). True when something was ended."""
        owner = _key_hash_arg(args, "owner")
        every = args.get("all", False)
        if not isinstance(every, bool):
            raise MalformedInput("argument 'all' must be a boolean")
        key = owner_prefix(owner.raw) + accounts.session_id(args.get("session"))
        if every:
            self._check_session(owner, args)
            with self.store.batch(sync=True) as batch:
                self._end_sessions(batch, owner)
            return True
        if not self.store.has(Space.SESSIONS, key):
            return False
        self.store.delete(Space.SESSIONS, key, sync=True)
        return True

    # -- issue 8: the follow-request inbox (node/server/_social.py) ------------------------

    async def social_send(self, args: Args, requester: bytes) -> bool:
        async with self._write_lock:
            return self.inbox.send(args, _SOURCE.get(), bool(requester), self.clock())

    async def social_list(self, args: Args, requester: bytes) -> list[dict[str, bytes]]:
        return self.inbox.list(args, int(self.clock() * 1000))

    async def social_remove(self, args: Args, requester: bytes) -> int:
        async with self._write_lock:
            return self.inbox.remove(args, int(self.clock() * 1000))

    # -- issue 8: secret links (node/server/_links.py) ----------------------------------

    async def link_get(self, args: Args, requester: bytes) -> dict[str, Any]:
        async with self._write_lock:
            return await _links.get(self.store, self._blocks, args, int(self.clock() * 1000))

    # -- maintenance --------------------------------------------------------------------

    async def collect_garbage(self) -> dict[str, int]:
        """Collect garbage while serving: writers wait for one short step at a time, never for
        the mark (see node/server/_gc.py)."""
        async with self._gc_lock:
            async with self._write_lock:
                run = await trio.to_thread.run_sync(Collection, self.store, int(self.clock()))
                self._collection = run
            try:
                await trio.to_thread.run_sync(run.mark)
                await trio.to_thread.run_sync(run.plan)
                more = True
                while more:
                    async with self._write_lock:
                        more = await trio.to_thread.run_sync(run.step)
                async with self._write_lock:
                    stats = await trio.to_thread.run_sync(run.finish)
                    self._collection = None
                    self._counted.clear()  # space may have been freed: count again
            finally:
                self._collection = None
            if stats["deleted"]:
                await trio.to_thread.run_sync(self.store.compact)
            return stats

    # -- routing ----------------------------------------------------------------------------

    def home_of_username(self, username: str) -> str | None:
        """The home node id the PKI names for `username`, None when it names none."""
        claim = None if self.pki is None else self.pki.lookup(username)
        return None if claim is None else claim.home

    def home_of_identity(self, identity: CID) -> str | None:
        """The home node id of the user whose identity key hash is `identity`."""
        username = None if self.pki is None else self.pki.owner(identity)
        return None if username is None else self.home_of_username(username)

    def addresses_of(self, node_id: str) -> list[str]:
        """Full multiaddrs of a node, from its PKI node record."""
        record = None if self.pki is None else self.pki.node_record(node_id)
        if record is None:
            return []
        return [f"{addr}/p2p/{node_id}" for addr in record.addrs]

    # -- the rest of the method table -------------------------------------------------------

    async def node_info(self, args: Args, requester: bytes) -> dict[str, Any]:
        head = None if self.pki is None else self.pki.head()
        return {
            "node": self.settings.node_id,
            "test_mode": self.settings.test_mode,
            "addrs": list(self.settings.addrs),
            "pki_role": None if self.pki is None else self.pki.role,
            "pki_head": None if head is None else {"seq": head.seq, "hash": head.hash},
            "stats": dict(self.stats),
        }

    async def block_get(self, args: Args, requester: bytes) -> bytes:
        auth = args.get("auth")
        cid: CID = _arg(args, "cid", CID)
        owner = args.get("owner")
        return await self.get_block(
            cid,
            None if auth is None else bats.ReadAuth.from_cbor(auth),
            requester,
            _key_hash_arg(args, "owner") if owner is not None else None,
        )

    async def champ_get(self, args: Args, requester: bytes) -> list[bytes]:
        root: CID = _arg(args, "root", CID)
        keys = _arg(args, "keys", list)
        if not 1 <= len(keys) <= MAX_CHAMP_KEYS or not all(isinstance(k, bytes) for k in keys):
            raise MalformedInput(f"keys must be a list of 1-{MAX_CHAMP_KEYS} byte strings")
        self.stats["champ_lookups"] += 1
        bound = champ.MAX_PATH_NODES * len(keys)  # a map built as deep chains stays cheap
        return await champ.lookup_blocks(self._blocks, root, keys, max_nodes=bound)

    async def pointer_get(self, args: Args, requester: bytes) -> bytes | None:
        update = self._pointer(_key_hash_arg(args, "writer"))
        return None if update is None else update.encode()

    async def pki_lookup(self, args: Args, requester: bytes) -> dict[str, Any]:
        return (await self._claim_synced(check_username(_username_arg(args)))).to_cbor()

    async def pki_status(self, args: Args, requester: bytes) -> dict[str, Any]:
        status = self._log().status().to_cbor()
        if self._log().role == "mirror":
            status["pki_node_health"] = self.pki_health.to_cbor()
        return status

    async def pki_entries(self, args: Args, requester: bytes) -> dict[str, Any]:
        after, limit = _arg(args, "after", int), _arg(args, "limit", int)
        if after < 0 or not 1 <= limit <= PKI_PAGE:
            raise MalformedInput(f"after must be >= 0 and limit 1-{PKI_PAGE}")
        page = await trio.to_thread.run_sync(self._log().page, after, limit)
        return page.to_cbor()

    async def pki_submit(self, args: Args, requester: bytes) -> dict[str, Any]:
        """A record from another node or a client. A mirror checks it as the PKI node would
        before passing it on as its own submission, so it vouches only for what it may."""
        record = args.get("record")
        if not isinstance(record, dict):
            raise MalformedInput("record must be a PKI record map")
        parsed = record_from_cbor(record)
        submitter = requester.decode(errors="replace")
        if self._log().role == "mirror":
            if isinstance(parsed, Claim) and self._log().lookup(parsed.username) is None:
                await self._sync_on_demand()
            check_submission(self._log().index, parsed, submitter, self._log().pki_node)
        return await self._submit(parsed, submitter)

    async def admin_gc(self, args: Args, requester: bytes) -> dict[str, int]:
        token = _arg(args, "token", str)
        expected = self.settings.admin_token
        if not expected or not secrets.compare_digest(token.encode(), expected.encode()):
            raise Denied("maintenance calls need this node's admin token")
        return await self.collect_garbage()


METHODS: Final[dict[str, Handler]] = {
    "node.info": NodeService.node_info,
    "block.get": NodeService.block_get,
    "block.put": NodeService.block_put,
    "champ.get": NodeService.champ_get,
    "pointer.get": NodeService.pointer_get,
    "pointer.cas": NodeService.pointer_cas,
    "account.signup": NodeService.signup,
    "account.params": NodeService.login_params,
    "account.login": NodeService.login,
    "account.update": NodeService.update_login,
    "usage.get": NodeService.usage,
    "session.end": NodeService.end_session,
    "session.check": NodeService.check_session,
    "pki.lookup": NodeService.pki_lookup,
    "pki.status": NodeService.pki_status,
    "pki.entries": NodeService.pki_entries,
    "pki.submit": NodeService.pki_submit,
    "admin.gc": NodeService.admin_gc,
    # issue 8
    "social.send": NodeService.social_send,
    "social.list": NodeService.social_list,
    "social.remove": NodeService.social_remove,
    "link.get": NodeService.link_get,
}
