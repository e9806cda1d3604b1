"""Migration (protocol.md §14): a node that mirrors a user becomes their home. The user's new
claim, signed by their identity key and naming that node, is the authority for every step; the
PKI taking it is the move's commit point.

At the new home (`account.migrate`): the claim checked, the copy caught up, the old home asked
to stop the user's writes and hand over what their blocks do not hold (`mirror.handoff`), the
copy brought up to the old home's final pointers, the claim submitted to the PKI, then the copy
turned into a hosted account in one synced batch. At the old home: the handoff stops the user's
writes until the PKI names another home (the user is then released: kept as a mirrored user)
or, HANDOFF_TTL later, still names this node (the writes resume).

Owns the `h` records of Space.MIRRORS:
  b"h" ‖ identity key hash -> CBOR {to: node id, until: seconds}: the user's writes are stopped
      while they are handed to node `to`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import trio

from node.server._blocks import usage_record
from node.server._gc import mark
from node.server._mirrors import MirrorState, first_private_ids
from node.store import Space, Store, owner_prefix
from protocols import bats, cbor
from protocols.accounts import MAX_SESSIONS
from protocols.cid import CID, decode_varint, encode_varint
from protocols.errors import (
    Conflict,
    Corrupted,
    Denied,
    MalformedInput,
    NotFound,
    PyrgosError,
    TooLarge,
    Unavailable,
)
from protocols.links import LABEL_BYTES
from protocols.methods import (
    MAX_LINK_COUNTS,
    AccountMigrate,
    Done,
    MirrorHandoff,
    MirrorHandoffReply,
)
from protocols.owners import OwnerProof
from protocols.pki import Claim
from protocols.social import MAX_PENDING
from protocols.writerdata import WriterData

if TYPE_CHECKING:
    from node.server._service import NodeService

log = logging.getLogger(__name__)

# Seconds the old home stops a user's writes for a handoff the PKI has not (yet) taken: long
# enough for the new home to catch up and submit the claim, short enough that a move that
# failed half way leaves the user read-only for two minutes at most.
HANDOFF_TTL: Final = 120.0
# Seconds after asking for the handoff within which the new home submits the claim, and the
# most the submission may take: together well inside HANDOFF_TTL, so the old home never
# resumes a user's writes while the PKI may yet take the claim that moves them.
SUBMIT_WITHIN: Final = HANDOFF_TTL / 4
_MOVING: Final = b"h"


class Migration:
    """Both ends of a move: `account.migrate` at the new home, `mirror.handoff` and the
    stopped writes at the old one."""

    def __init__(self, node: NodeService) -> None:
        self.node = node
        self.store: Store = node.store

    # -- the old home: stopped writes -----------------------------------------------------------

    def moving(self, identity: CID) -> tuple[str, float] | None:
        """(new home, until when) of a user whose writes are stopped for a handoff."""
        raw = self.store.get(Space.MIRRORS, _MOVING + identity.raw)
        if raw is None:
            return None
        value = cbor.decode(raw)
        return value["to"], value["until"]

    def check_writable(self, identity: CID) -> None:
        """Conflict while the user is being handed to another node (checked under the write
        lock by every call that changes what a handoff copies)."""
        found = self.moving(identity)
        if found is not None:
            raise Conflict(
                f"this user is moving to node {found[0]}: their writes wait until the move ends"
            )

    def identity_of(self, username: str) -> CID | None:
        """The identity key hash of a user homed here."""
        raw = self.store.get(Space.ACCOUNTS, username.encode())
        return None if raw is None else cbor.decode(raw, limit=64 * 1024)["identity"]

    async def hosts(self, identity: CID) -> bool:
        """Whether the user is homed here; a handoff under way is settled first, so that the
        old home routes a user the PKI moved like any other node."""
        if self.moving(identity) is not None:
            await self.settle(identity)
        return self.store.get(Space.WRITERS, identity.raw) == identity.raw

    async def before_write(self, user: object) -> None:
        """Called for every home call that is not a failover read: a user homed here whose
        handoff is under way is settled first (released or resumed), else Conflict."""
        identity: CID | None = None
        if isinstance(user, CID):
            identity = user
        elif isinstance(user, str) and len(user) <= 64:
            identity = self.identity_of(user)
        if identity is None or self.moving(identity) is None:
            return
        await self.settle(identity)
        self.check_writable(identity)

    async def settle(self, identity: CID) -> None:
        """End a handoff as the PKI says: another home named, the user is released; the
        handoff expired with this node still named, the writes resume."""
        node = self.node
        found = self.moving(identity)
        if found is None or node.pki is None:
            return
        if node.pki.role == "mirror":
            await node.pki_calls.sync_on_demand()
        username = node.pki.owner(identity)
        claim = None if username is None else node.pki.lookup(username)
        if claim is None or claim.identity != identity:
            return
        if claim.home != node.settings.node_id:
            await self.release(identity, claim.username)
        elif node.clock() > found[1] and (node.pki.role == "root" or not node.pki_health.failures):
            # Resumed only on a fresh PKI view: a mirror that cannot reach its PKI node might
            # not see the claim that moved the user, and would take writes the new home lacks.
            async with node.write_lock:
                self.store.delete(Space.MIRRORS, _MOVING + identity.raw, sync=True)
            log.info("a handoff expired before the PKI took it: the user's writes resume")

    async def handoff(self, request: MirrorHandoff, requester: bytes) -> MirrorHandoffReply:
        """Stop the user's writes for the node their new claim names (which must be the
        caller), and hand over their inbox, link use counts and sessions."""
        node, claim = self.node, request.claim
        if not requester:
            raise Denied("only the node a user moves to asks for their handoff")
        claim.verify()
        if claim.home != requester.decode(errors="replace"):
            raise Denied("the claim names another node than the caller as the user's new home")
        if claim.previous is not None:
            raise MalformedInput("a migration keeps the identity key")
        raw = self.store.get(Space.ACCOUNTS, claim.username.encode())
        if raw is None:
            raise NotFound(f"user {claim.username!r} is not homed on this node")
        identity: CID = cbor.decode(raw, limit=64 * 1024)["identity"]
        if identity != claim.identity:
            raise Denied("the claim is not signed by the user's identity key")
        current = None if node.pki is None else node.pki.lookup(claim.username)
        if current is not None and claim.expiry <= current.expiry:
            raise Denied("the claim is not newer than the user's current one")
        async with node.write_lock:
            until = int(node.clock() + HANDOFF_TTL)
            record = cbor.encode({"to": claim.home, "until": until})
            self.store.put(Space.MIRRORS, _MOVING + identity.raw, record, sync=True)
            log.info("a user's writes are stopped: they move to another node")
            return self._belongings(identity)

    def _belongings(self, identity: CID) -> MirrorHandoffReply:
        """What the old home keeps of a user beside their blocks, all opaque to it."""
        prefix = owner_prefix(identity.raw)
        inbox = []
        for key, sealed in self.store.items(Space.INBOX, prefix):
            inbox.append((key[len(prefix) :], sealed))
            if len(inbox) >= MAX_PENDING:
                break
        links = []
        for key, raw in self.store.items(Space.LINKS, prefix):
            label = key[len(prefix) :]
            if len(label) == LABEL_BYTES:
                links.append((label, decode_varint(raw)[0]))
            if len(links) >= MAX_LINK_COUNTS:
                break
        now = int(self.node.clock())
        sessions = []
        for key, raw in self.store.items(Space.SESSIONS, prefix):
            expiry = cbor.decode(raw)
            if isinstance(expiry, int) and expiry > now:
                sessions.append((key[len(prefix) :], expiry))
        sessions = sorted(sessions, key=lambda s: s[1])[-MAX_SESSIONS:]
        return MirrorHandoffReply(tuple(inbox), tuple(links), tuple(sessions))

    async def release(self, identity: CID, username: str) -> None:
        """The user's new home is in the PKI: this node stops hosting them and keeps them as a
        mirrored user (their pointers, blocks and login record stay; the mirror task keeps up
        from the new home). Their account, writer entries, usage, sessions, inbox, link counts
        and mirror BAT registration go, in one synced batch."""
        node, store = self.node, self.store
        pointer = node.pointers.pointer(identity)
        ids: list[bytes] = []
        writers = [identity]
        if pointer is not None:
            try:
                ids = await first_private_ids(node.blocks.source.get, pointer.new)
            except PyrgosError:
                ids = []
            root = store.get_block(pointer.new.raw)
            for proof in [] if root is None else WriterData.decode(root).owned:
                try:
                    writers.append(OwnerProof.decode(proof).writer)
                except (MalformedInput, TooLarge):
                    continue
        secret = None
        for bat_id in ids:
            secret = store.get(Space.BATS, bat_id)
            if secret is not None:
                break
        name, prefix = username.encode(), owner_prefix(identity.raw)
        async with node.write_lock:
            if self.moving(identity) is None:
                return  # released meanwhile
            account = store.get(Space.ACCOUNTS, name)
            owned = [w for w in writers if store.get(Space.WRITERS, w.raw) == identity.raw]
            with store.batch(sync=True) as batch:
                for writer in owned:
                    batch.delete(Space.WRITERS, writer.raw)
                    if secret is None:  # nothing to mirror with: the next collection frees it
                        batch.delete(Space.POINTERS, writer.raw)
                batch.delete(Space.ACCOUNTS, name)
                batch.delete(Space.USAGE, identity.raw)
                for space in (Space.SESSIONS, Space.INBOX, Space.LINKS, Space.STORED):
                    for key in list(store.keys(space, prefix)):
                        batch.delete(space, key)
                for bat_id in ids:
                    batch.delete(Space.BATS, bat_id)
                batch.delete(Space.MIRRORS, _MOVING + identity.raw)
                if secret is not None and account is not None:
                    now = int(node.clock())
                    state = MirrorState(username, identity, secret, added=now)  # counted next round
                    node.mirrors.hold(batch, state, account, owned)
        node.blocks.forget_counts()
        node.mirrors.wake.set()
        log.info("a user moved to another node: this node now mirrors them")

    # -- the new home -------------------------------------------------------------------------

    async def migrate(self, request: AccountMigrate, requester: bytes) -> Done:
        """Become the home of a user this node mirrors, or pass the request to the node the
        claim names."""
        node, claim = self.node, request.claim
        me = node.settings.node_id
        claim.verify()
        if claim.previous is not None:
            raise MalformedInput("a migration keeps the identity key: it is no key change")
        if claim.home != me:
            return await self._pass_on(request, requester)
        current = await self._current(claim)
        state = node.mirrors.state(claim.username)
        if current.home == me and state is None:
            raise Conflict(f"this node is {claim.username!r}'s home already")
        if state is None or state.identity != claim.identity:
            raise Denied(
                f"this node does not mirror {claim.username!r}: a user moves only to a node "
                "that mirrors them (`pyrgos node mirror add`)"
            )
        if current.home == me:  # the PKI took the move, the switch did not happen: finish it
            await self.adopt(state, None)
            return Done()
        if state.error is not None or state.synced is None or state.behind is not None:
            raise Conflict(
                f"this node's copy of {claim.username!r} is not caught up "
                f"({state.error or 'behind'}): wait until `pyrgos node mirror list` shows ok"
            )
        assert node.network is not None
        started = node.clock()
        args = MirrorHandoff(claim).to_cbor()
        assert isinstance(args, dict)
        answer = await node.network.call(current.home, "mirror.handoff", args)
        try:
            handed = MirrorHandoffReply.from_cbor(answer)
        except (MalformedInput, TooLarge) as exc:
            raise Corrupted(f"the old home's handoff is malformed: {exc.message}") from exc
        # Its writes are stopped: a round that ends caught up holds its final pointers.
        if not await node.mirrors.sync_user(state):
            raise Conflict(
                "the copy could not catch up with the old home in one round: try again (the "
                f"old home takes the user's writes again after {int(HANDOFF_TTL)} s)"
            )
        if node.clock() - started > SUBMIT_WITHIN:
            raise Conflict(
                "the last copy took too long: the old home may take the user's writes again "
                "before the PKI names this node, so the move stops here; try again"
            )
        with trio.fail_after(SUBMIT_WITHIN):
            await node.pki_calls.submit(claim, me)
        await self.adopt(state, handed)
        log.info("a mirrored user moved here: this node is now their home")
        return Done()

    async def _pass_on(self, request: AccountMigrate, requester: bytes) -> Done:
        node, target = self.node, request.claim.home
        if requester:
            raise Denied("a migration is passed only to the node it names")
        known = node.pki is not None and (
            target == node.pki.pki_node or node.pki.node_record(target) is not None
        )
        if not known:
            raise NotFound(f"unknown node {target}: the PKI has no record of it")
        if node.network is None:
            raise Unavailable("this node has no network to reach other nodes")
        args = request.to_cbor()
        assert isinstance(args, dict)
        await node.network.call(target, "account.migrate", args)
        return Done()

    async def _current(self, claim: Claim) -> Claim:
        node = self.node
        current = None if node.pki is None else node.pki.lookup(claim.username)
        if current is None and node.pki is not None and node.pki.role == "mirror":
            await node.pki_calls.sync_on_demand()
            current = node.pki.lookup(claim.username)
        if current is None:
            raise NotFound(f"unknown user {claim.username!r}: the PKI has no claim for that name")
        if current.identity != claim.identity:
            raise Denied("the claim is not signed by the user's identity key")
        return current

    async def adopt(self, state: MirrorState, handed: MirrorHandoffReply | None) -> None:
        """Turn the copy of a mirrored user into a hosted account, in one synced batch: the
        login record, the writers' entries, the mirror BAT, the usage the pointers reach, and
        what the old home handed over."""
        node, store = self.node, self.store
        mirrors = node.mirrors
        account = mirrors.account(state.username)
        if account is None:
            raise NotFound("the user's login record is not copied yet: try again shortly")
        writers = mirrors.writers(state.username)
        if state.identity not in writers:
            raise NotFound("the user's root pointer is not copied yet: try again shortly")
        prefix = owner_prefix(state.identity.raw)
        async with node.gc_lock:
            roots = [p.new for w in writers if (p := node.pointers.pointer(w)) is not None]
            reached = await trio.to_thread.run_sync(mark, store, roots)
            size = sum(store.block_size(raw) for raw in reached)
            async with node.write_lock:
                name = state.username.encode()
                if store.has(Space.ACCOUNTS, name) or store.has(Space.WRITERS, state.identity.raw):
                    raise Conflict(f"{state.username!r} is homed on this node already")
                with store.batch(sync=True) as batch:
                    batch.put(Space.ACCOUNTS, name, account)
                    for writer in writers:
                        batch.put(Space.WRITERS, writer.raw, state.identity.raw)
                    batch.put(Space.BATS, bats.hashed_id(state.secret), state.secret)
                    quota = node.settings.default_quota
                    batch.put(Space.USAGE, state.identity.raw, usage_record(size, 0, quota))
                    if handed is not None:
                        for request_id, sealed in handed.inbox:
                            batch.put(Space.INBOX, prefix + request_id, sealed)
                        for label, uses in handed.links:
                            batch.put(Space.LINKS, prefix + label, encode_varint(uses))
                        for session_id, expiry in handed.sessions:
                            batch.put(Space.SESSIONS, prefix + session_id, cbor.encode(expiry))
                    mirrors.forget(batch, state, writers)
        node.blocks.forget_counts()
