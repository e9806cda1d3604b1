"""The node's method table: every call a client (or, later, another node) can make.

`NodeService.call` decodes each call's arguments with its typed request (protocols/methods.py),
forwards home calls to the user's home node, throttles password proofs, and dispatches to the
part that owns the call's domain: _blocks.py (blocks, CHAMP lookups, quota), _pointers.py
(pointers, writers; _writers.py keeps the sub-writers of owner proofs), _accounts.py
(accounts, sessions), _pki_calls.py (the PKI), _social.py (the follow-request inbox),
_links.py (secret links), _mirrors.py (mirrored users, the mirror task). Writes are
serialised by one lock and applied in one LevelDB batch each, so a refused call changes nothing.
Blocking store work runs in a worker thread so the event loop keeps serving.
"""

from __future__ import annotations

import contextvars
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

import trio

from node import threads
from node.server._accounts import Accounts
from node.server._blocks import Blocks, StoreBlocks, stored_block
from node.server._gc import Collection
from node.server._links import Links
from node.server._migrate import Migration
from node.server._mirrors import Mirrors
from node.server._pki import PkiLog, SyncResult
from node.server._pki_calls import PkiCalls
from node.server._pointers import Pointers
from node.server._social import Inbox
from node.store import Store
from protocols import accounts, bats
from protocols.cid import CID
from protocols.errors import AuthFailed, Denied, MalformedInput, NotFound, RateLimited, Unavailable
from protocols.methods import METHODS as SPECS
from protocols.methods import (
    AdminGc,
    Message,
    Method,
    NodeInfo,
    NodeInfoReply,
    Report,
)
from protocols.pki import NodeRecord, SyncHealth

__all__ = ["METHODS", "NodeService", "NodeSettings", "StoreBlocks", "stored_block"]

log = logging.getLogger(__name__)

GiB: Final = 1024**3
# Seconds a home (or mirror) whose call failed is skipped by reads, which go to the mirrors
# meanwhile: one failed dial per node and period, not one per block of a file.
FAILOVER_HOLD: Final = 10.0
T = TypeVar("T")

Handler = Callable[["NodeService", Any, bytes], Awaitable[Message]]


class Network(Protocol):
    """How a node reaches the others: libp2p in a running node, anything in tests."""

    async def call(self, node_id: str, method: str, args: dict[str, Any]) -> Any:
        """Call `method` on node `node_id` (requester: this node) and return its result."""
        ...

    async def fetch_block(self, node_id: str, cid: CID, auth: bats.ReadAuth | None) -> bytes:
        """A block from node `node_id`, checked against `cid`."""
        ...

    async def fetch_many(
        self,
        node_id: str,
        wants: Iterable[tuple[CID, bats.ReadAuth | None]],
        receive: Callable[[CID, bytes], Awaitable[None]],
    ) -> None:
        """Every block of `wants` (read lazily) from node `node_id`, many in flight, each
        checked against its CID and handed to `receive` as it arrives; raises the first
        failure (the rest are dropped)."""
        ...


# Who is calling, for per-source limits: the client's address over HTTP, the peer id that
# Noise authenticated over libp2p; set by `call` for the call's task.
_SOURCE: contextvars.ContextVar[str] = contextvars.ContextVar("source", default="")
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
    # New nodes the PKI node takes a day (a node id costs nothing to make); a swarm that
    # starts many at once, simulated or real, raises it at its PKI node.
    max_daily_nodes: int = 100
    signup_token: str = ""  # when set, signup presents it (and is then not limited per source)


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
        self.random = random
        self._user_logins = accounts.LoginThrottle()
        self._source_logins = accounts.LoginThrottle(free=SOURCE_FREE_FAILURES)
        self.settings = settings
        self.network = network
        self.pki = pki
        self.pki_health = SyncHealth()  # how this mirror reaches its PKI node (`pki status`)
        self.stats: Counter[str] = Counter()
        self.write_lock = trio.Lock()  # every write, and each step of a collection
        # One collection at a time; the mirror task holds it while it copies a tree, so that
        # nothing it stored is collected before the pointer that reaches it lands.
        self.gc_lock = trio.Lock()
        self.collection: Collection | None = None  # the running one, told of every write
        self._unreachable: dict[str, float] = {}  # node id -> until when reads skip it
        # The parts, by domain; each owns its keyspaces and takes store, clock and random
        # from here.
        self.blocks = Blocks(self)
        self.pointers = Pointers(self)
        self.accounts = Accounts(self)
        self.pki_calls = PkiCalls(self)
        self.inbox = Inbox(self)
        self.links = Links(self)
        self.mirrors = Mirrors(self)
        self.migration = Migration(self)

    @property
    def node_id_bytes(self) -> bytes:
        return self.settings.node_id.encode()

    async def call(
        self, method: str, args: Any, requester: bytes = b"", *, source: str | None = None
    ) -> Any:
        """Dispatch one call; raises a PyrgosError the transport turns into an error reply.

        `requester` is the calling node's peer id (empty from a client over HTTP), `source`
        the HTTP client's address. Per-source limits (signups, failed logins) count the
        caller: the peer id when there is one, else the address. The arguments are decoded
        (protocols/methods.py) before anything else, here and again at a home they are
        forwarded to, which receives them as they came.
        """
        caller = f"peer:{requester.hex()}" if requester else f"addr:{source or ''}"
        _SOURCE.set(caller)
        spec, handler = SPECS.get(method), METHODS.get(method)
        if spec is None or handler is None:
            raise NotFound(f"unknown method {method!r}")
        if not isinstance(args, dict):
            raise MalformedInput("call arguments must be a CBOR map")
        self.stats["calls"] += 1
        request = spec.request.from_cbor(args)
        if spec.home is not None and not spec.failover:  # a user moving away takes no write
            await self.migration.before_write(getattr(request, spec.home))
        home = None
        if spec.home is not None and not requester and self.network is not None:
            # Calls that came from another node are never forwarded again, so a stale PKI
            # view cannot bounce a call between nodes.
            home = await self._home_elsewhere(getattr(request, spec.home))
        if not spec.throttled:
            return await self._dispatch(handler, home, spec, args, request, requester)
        # Per source wherever the call arrives, per username at the user's home only.
        sources = [caller]
        user = getattr(request, "username", None)
        users = [f"user:{user}"] if home is None and isinstance(user, str) else []
        try:
            self._source_logins.check(sources, self.clock(), "from this address")
            self._user_logins.check(users, self.clock(), "for this user")
        except RateLimited:
            self.stats["logins_throttled"] += 1
            raise
        try:
            result = await self._dispatch(handler, home, spec, args, request, requester)
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
        self,
        handler: Handler,
        home: str | None,
        spec: Method,
        args: dict[str, Any],
        request: Message,
        requester: bytes,
    ) -> Any:
        if home is not None and self.network is not None:
            self.stats["forwarded"] += 1
            network = self.network
            if not spec.failover:  # a write goes to the home or fails: never split brain
                try:
                    return await network.call(home, spec.name, args)
                except (Denied, NotFound):
                    # The user may have moved (§14): the PKI names their home now.
                    moved = await self._moved(getattr(request, spec.home or ""), home)
                    if moved is None:
                        raise
                return await network.call(moved, spec.name, args)

            async def local() -> Any:
                return (await handler(self, request, requester)).to_cbor()

            owner = getattr(request, spec.home or "")
            return await self.failover(
                home, owner, lambda node: network.call(node, spec.name, args), local
            )
        reply = await handler(self, request, requester)
        return reply.to_cbor()

    async def failover(
        self,
        home: str,
        owner: CID,
        ask: Callable[[str], Awaitable[T]],
        local: Callable[[], Awaitable[T]] | None = None,
    ) -> T:
        """A read of `owner`'s data: from their home; when it cannot be reached, from this
        node's own copy (`local`, if this node mirrors the user), else from the mirrors their
        claim lists, in order. A home or mirror that failed is skipped for FAILOVER_HOLD
        seconds, so each read of a file does not wait for a dial to fail again. The home's
        error stands when no mirror answers; with no mirror to go to, the home is always
        asked."""
        own = local is not None and self.mirrors.holds(owner)
        mirrors = [m for m in self.mirrors_of(owner) if m != self.settings.node_id]
        if not own and not mirrors:
            return await ask(home)
        now = self.clock()
        if self._unreachable.get(home, 0.0) <= now:
            try:
                return await ask(home)
            except Unavailable as exc:
                self._unreachable[home] = now + FAILOVER_HOLD
                failure = exc
        else:
            failure = Unavailable(f"the home node {home} of this user cannot be reached")
        if own and local is not None:
            self.stats["failover_local"] += 1
            return await local()
        for mirror in mirrors:
            if self._unreachable.get(mirror, 0.0) > now:
                continue
            try:
                result = await ask(mirror)
            except Unavailable:
                self._unreachable[mirror] = now + FAILOVER_HOLD
                continue
            except NotFound:  # a mirror still behind: another may hold it
                continue
            self.stats["failover_reads"] += 1
            return result
        raise failure

    async def _moved(self, user: object, home: str) -> str | None:
        """The user's home after a fresh PKI pull, when it is another node than `home`."""
        if self.pki is None:
            return None
        if self.pki.role == "mirror":
            await self.pki_calls.sync_on_demand()
        now = (
            self.home_of_identity(user)
            if isinstance(user, CID)
            else self.home_of_username(user)
            if isinstance(user, str)
            else None
        )
        return None if now in (None, home, self.settings.node_id) else now

    def mirrors_of(self, owner: CID) -> tuple[str, ...]:
        """The mirrors `owner`'s claim lists (signed by their identity key)."""
        username = None if self.pki is None else self.pki.owner(owner)
        claim = None if self.pki is None or username is None else self.pki.lookup(username)
        return () if claim is None else claim.mirrors

    async def _home_elsewhere(self, user: object) -> str | None:
        """The home of a user (owner key hash or username) when it is not this node; a mirror
        that does not know the user yet pulls new PKI entries once before answering."""
        if isinstance(user, CID) and user.is_identity:
            if await self.migration.hosts(user):
                return None
            home = self.home_of_identity(user)
        elif isinstance(user, str) and len(user) <= 64:
            identity = self.migration.identity_of(user)
            if identity is not None and await self.migration.hosts(identity):
                return None
            home = self.home_of_username(user)
        else:
            return None
        if home is None and self.pki is not None and self.pki.role == "mirror":
            await self.pki_calls.sync_on_demand()
            home = (
                self.home_of_identity(user)
                if isinstance(user, CID)
                else self.home_of_username(user)
            )
        return None if home in (None, self.settings.node_id) else home

    async def relay_home(self, owner: CID | None, requester: bytes) -> str | None:
        """The home of `owner` when this node reads on a client's behalf for a foreign user."""
        if owner is None or requester or self.network is None:
            return None
        return await self._home_elsewhere(owner)

    # -- what transports and the daemon call ------------------------------------------------

    async def get_block(
        self,
        cid: CID,
        auth: bats.ReadAuth | None,
        requester: bytes,
        owner: CID | None = None,
    ) -> bytes:
        """A block, if the auth allows it (node/server/_blocks.py `Blocks.get_block`)."""
        return await self.blocks.get_block(cid, auth, requester, owner)

    async def publish(self, record: NodeRecord) -> None:
        """Put this node's record (its addresses) in the PKI."""
        await self.pki_calls.submit(record, self.settings.node_id)

    async def sync_pki(self) -> SyncResult | None:
        """Pull new PKI entries until caught up (node/server/_pki_calls.py)."""
        return await self.pki_calls.sync_pki()

    async def pull_pki(self) -> None:
        """`sync_pki` that logs a failure and keeps it in `pki_health`, never raising it."""
        await self.pki_calls.pull_pki()

    # -- maintenance --------------------------------------------------------------------

    async def collect_garbage(self) -> dict[str, int]:
        """Collect garbage while serving: writers wait for one short step at a time, never for
        the mark (see node/server/_gc.py)."""
        async with self.gc_lock:
            async with self.write_lock:
                run = await threads.run_sync(Collection, self.store, int(self.clock()))
                self.collection = run
            try:
                await threads.run_sync(run.mark)
                await threads.run_sync(run.plan)
                more = True
                while more:
                    async with self.write_lock:
                        more = await threads.run_sync(run.step)
                async with self.write_lock:
                    stats = await threads.run_sync(run.finish)
                    self.collection = None
                    self.blocks.forget_counts()  # space may have been freed: count again
            finally:
                self.collection = None
            if stats["deleted"]:
                await threads.run_sync(self.store.compact)
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

    # -- calls of the service itself ------------------------------------------------------

    async def node_info(self, request: NodeInfo, requester: bytes) -> NodeInfoReply:
        head = None if self.pki is None else self.pki.head()
        return NodeInfoReply(
            self.settings.node_id,
            self.settings.test_mode,
            tuple(self.settings.addrs),
            None if self.pki is None else self.pki.role,
            None if head is None else (head.seq, head.hash),
            dict(self.stats),
        )

    def check_admin(self, token: str) -> None:
        """Refuse a maintenance call that does not carry this node's admin token."""
        expected = self.settings.admin_token
        if not expected or not secrets.compare_digest(token.encode(), expected.encode()):
            raise Denied("maintenance calls need this node's admin token")

    async def admin_gc(self, request: AdminGc, requester: bytes) -> Report:
        self.check_admin(request.token)
        return Report(dict(await self.collect_garbage()))


# Each method's handler, by the part that owns its domain; the request types, limits, home
# arguments, sessions and throttles are in protocols.methods.METHODS.
METHODS: Final[dict[str, Handler]] = {
    "node.info": lambda s, r, q: s.node_info(r, q),
    "block.get": lambda s, r, q: s.blocks.block_get(r, q),
    "block.put": lambda s, r, q: s.blocks.block_put(r, q),
    "champ.get": lambda s, r, q: s.blocks.champ_get(r, q),
    "pointer.get": lambda s, r, q: s.pointers.pointer_get(r, q),
    "pointer.cas": lambda s, r, q: s.pointers.pointer_cas(r, q),
    "account.signup": lambda s, r, q: s.accounts.signup(r, q, _SOURCE.get()),
    "account.params": lambda s, r, q: s.accounts.login_params(r, q),
    "account.login": lambda s, r, q: s.accounts.login(r, q),
    "account.update": lambda s, r, q: s.accounts.update_login(r, q),
    "usage.get": lambda s, r, q: s.blocks.usage_get(r, q),
    "session.end": lambda s, r, q: s.accounts.session_end(r, q),
    "session.check": lambda s, r, q: s.accounts.session_check(r, q),
    "pki.lookup": lambda s, r, q: s.pki_calls.pki_lookup(r, q),
    "pki.status": lambda s, r, q: s.pki_calls.pki_status(r, q),
    "pki.entries": lambda s, r, q: s.pki_calls.pki_entries(r, q),
    "pki.submit": lambda s, r, q: s.pki_calls.pki_submit(r, q),
    "admin.gc": lambda s, r, q: s.admin_gc(r, q),
    "social.send": lambda s, r, q: s.inbox.social_send(r, q, _SOURCE.get()),
    "social.list": lambda s, r, q: s.inbox.social_list(r, q),
    "social.remove": lambda s, r, q: s.inbox.social_remove(r, q),
    "link.get": lambda s, r, q: s.links.link_get(r, q),
    "mirror.account": lambda s, r, q: s.mirrors.mirror_account(r, q),
    "admin.mirror.add": lambda s, r, q: s.mirrors.admin_add(r, q),
    "admin.mirror.list": lambda s, r, q: s.mirrors.admin_list(r, q),
    "admin.mirror.remove": lambda s, r, q: s.mirrors.admin_remove(r, q),
    "account.migrate": lambda s, r, q: s.migration.migrate(r, q),
    "mirror.handoff": lambda s, r, q: s.migration.handoff(r, q),
}
