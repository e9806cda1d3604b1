"""Secret links at the owner's home node (DESIGN §10): `link.get` checks a reader's proof, the
expiry and the use count, and counts one use before handing over the sealed capability. Owns
Space.LINKS (owner_prefix(owner) ‖ label -> varint uses so far).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node.store import Space, Store, owner_prefix
from protocols import champ, crypto
from protocols.cid import CID, decode_varint, encode_varint
from protocols.errors import AuthFailed, Denied, MalformedInput, NotFound, TooLarge
from protocols.links import LinkTarget, lookup_key
from protocols.methods import LinkGet, LinkGetReply
from protocols.pointers import PointerUpdate
from protocols.writerdata import WriterData

if TYPE_CHECKING:
    from node.server._service import NodeService

UNKNOWN = "no such link: it was revoked, or never made (check the URL)"


async def find_target(
    store: Store, blocks: champ.BlockSource, owner: CID, label: bytes
) -> LinkTarget:
    """The link target under `label` in the owner's identity WriterData `links` CHAMP."""
    if store.get(Space.WRITERS, owner.raw) != owner.raw:
        raise NotFound("no user with this identity key is homed on this node")
    raw = store.get(Space.POINTERS, owner.raw)
    root = None if raw is None else store.get_block(PointerUpdate.decode(raw).new.raw)
    links = None if root is None else WriterData.decode(root).links
    if links is None:
        raise NotFound(UNKNOWN)
    found = await champ.get(blocks, links, lookup_key(label))
    data = None if found is None else store.get_block(found.raw)
    if data is None:
        raise NotFound(UNKNOWN)
    try:
        return LinkTarget.decode(data)
    except (MalformedInput, TooLarge) as exc:
        raise NotFound(UNKNOWN) from exc  # the owner linked something else under the label


def uses(store: Store, owner: CID, label: bytes) -> int:
    raw = store.get(Space.LINKS, owner_prefix(owner.raw) + label)
    return 0 if raw is None else decode_varint(raw)[0]


def check_use(target: LinkTarget, proof: bytes, used: int, now_ms: int) -> None:
    """All the rules of one use of a link, in order; raises unless it may be used now.

    1. The proof matches the verifier (constant time): else AuthFailed, and no use counts.
    2. It has not expired on the node's clock.
    3. It has been used fewer than its maximum number of times.
    """
    if not crypto.constant_time_equal(crypto.sha256(proof), target.verifier):
        raise AuthFailed("wrong link password, or a damaged link (the proof does not match)")
    if target.expiry is not None and now_ms >= target.expiry:
        raise Denied("this link has expired")
    if target.max_uses is not None and used >= target.max_uses:
        raise Denied(f"this link has been used its {target.max_uses} times")


class Links:
    """The `link.get` call of the users homed here."""

    def __init__(self, node: NodeService) -> None:
        self.node = node
        self.store: Store = node.store

    async def link_get(self, request: LinkGet, requester: bytes) -> LinkGetReply:
        """One use of a link, counted durably before the capability is returned (the count
        is read, checked and written under the node's write lock)."""
        store, owner, label = self.store, request.owner, request.label
        async with self.node.write_lock:
            self.node.migration.check_writable(owner)
            target = await find_target(store, self.node.blocks.source, owner, label)
            used = uses(store, owner, label)
            check_use(target, request.proof, used, int(self.node.clock() * 1000))
            with store.batch(sync=True) as batch:
                batch.put(Space.LINKS, owner_prefix(owner.raw) + label, encode_varint(used + 1))
        return LinkGetReply(target.cap, target.password)
