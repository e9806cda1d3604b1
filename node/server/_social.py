"""The follow-request inbox (DESIGN §10): sealed requests kept for their target. Owns
Space.INBOX (owner_prefix(target) ‖ request_id(request) -> the sealed request).

The node stores each request under its target only; it cannot tell who sent it (the request
is boxed to the target and every one has the same length). Anyone may send; only the target,
by a signature of its identity key over the current time, lists and removes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from node.store import Space, Store, owner_prefix
from protocols import accounts
from protocols.cid import CID
from protocols.crypto import VerifyKey
from protocols.errors import AuthFailed, NotFound, RateLimited
from protocols.methods import (
    Count,
    Done,
    SocialList,
    SocialListReply,
    SocialRemove,
    SocialSend,
)
from protocols.pki import DailyLimit
from protocols.social import MAX_PENDING, request_id

if TYPE_CHECKING:
    from node.server._service import NodeService

# Sends a day from one client address (a person follows a few people a day), and from one
# calling node, which relays the sends of all its users.
SENDS_PER_SOURCE: Final = 200
SENDS_PER_PEER: Final = 2000


class Inbox:
    """The inbox calls of the users homed here, and the per-source send limits."""

    def __init__(self, node: NodeService) -> None:
        self.node = node
        self.store: Store = node.store
        self._sources = DailyLimit(SENDS_PER_SOURCE)
        self._peers = DailyLimit(SENDS_PER_PEER)

    def _local_user(self, user: CID) -> None:
        if self.store.get(Space.WRITERS, user.raw) != user.raw:
            raise NotFound("no user with this identity key is homed on this node")

    def _check_signed(self, owner: CID, payload: list[object], signed: int, sig: bytes) -> None:
        """AuthFailed unless the owner's identity key signed `payload` within ±5 minutes."""
        now_ms = int(self.node.clock() * 1000)
        try:
            accounts.check_timed(
                VerifyKey.from_key_hash(owner), accounts.SOCIAL, payload, signed, sig, now_ms
            )
        except AuthFailed as exc:
            if abs(now_ms - signed) > accounts.MAX_SKEW_MS:
                raise
            raise AuthFailed("this request is not signed by the user's identity key") from exc

    # -- calls --------------------------------------------------------------------------------

    async def social_send(self, request: SocialSend, requester: bytes, source: str) -> Done:
        """Store a sealed request for its target; a duplicate is accepted and stored once.
        `source` is the caller (a client address, or the node that relayed the call)."""
        target = request.target
        self._local_user(target)
        prefix = owner_prefix(target.raw)
        key = prefix + request_id(request.request)
        async with self.node.write_lock:
            self.node.migration.check_writable(target)
            if self.store.has(Space.INBOX, key):
                return Done()
            pending = sum(1 for _ in self.store.keys(Space.INBOX, prefix))
            if pending >= MAX_PENDING:
                raise RateLimited(
                    f"this user's inbox holds {MAX_PENDING} follow requests already: "
                    "try again later"
                )
            limit = self._peers if requester else self._sources
            limit.take(source, self.node.clock(), "follow requests sent from one source")
            try:
                self.store.put(Space.INBOX, key, request.request, sync=True)
            except BaseException:
                limit.give_back(source)
                raise
        return Done()

    async def social_list(self, request: SocialList, requester: bytes) -> SocialListReply:
        """The pending requests of the signing owner (at most MAX_PENDING), in id order."""
        owner = request.owner
        self._check_signed(owner, [owner], request.time, request.sig)
        self._local_user(owner)
        prefix = owner_prefix(owner.raw)
        found: list[tuple[bytes, bytes]] = []
        for key, sealed in self.store.items(Space.INBOX, prefix):
            found.append((key[len(prefix) :], sealed))
            if len(found) >= MAX_PENDING:
                break
        return SocialListReply(tuple(found))

    async def social_remove(self, request: SocialRemove, requester: bytes) -> Count:
        """Remove the listed requests of the signing owner; the number that were there."""
        owner = request.owner
        ids = list(request.ids)
        self._check_signed(owner, [owner, ids], request.time, request.sig)
        self._local_user(owner)
        prefix = owner_prefix(owner.raw)
        async with self.node.write_lock:
            self.node.migration.check_writable(owner)
            present = [k for k in {prefix + i for i in ids} if self.store.has(Space.INBOX, k)]
            if present:
                with self.store.batch(sync=True) as batch:
                    for key in present:
                        batch.delete(Space.INBOX, key)
        return Count(len(present))
