"""The PKI calls of a node (lookup, status, entries, submit) and the pulls that keep a mirror's
copy of the log (node/server/_pki.py) up to date; at the PKI node, the daily limits on what
strangers may append.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import trio

from node import threads
from node.server._pki import PkiLog, SyncResult
from protocols.errors import MalformedInput, NotFound, PyrgosError, Unavailable
from protocols.methods import (
    PKI_PAGE,
    PkiEntries,
    PkiLookup,
    PkiLookupReply,
    PkiStatus,
    PkiSubmit,
    PkiSubmitReply,
    Report,
)
from protocols.pki import (
    RETRY_FIRST,
    Claim,
    DailyLimit,
    NodeRecord,
    Record,
    check_submission,
    record_to_cbor,
)

if TYPE_CHECKING:
    from node.server._service import NodeService

log = logging.getLogger(__name__)

PKI_SYNC_TIMEOUT: Final = 10  # seconds an on-demand PKI sync may take
# At the PKI node (besides the new nodes a day of NodeSettings.max_daily_nodes): records a
# known node publishes a day (one per start), and updates a day of one username's claim (a
# renewal each login near expiry, a move of home now and then).
NODE_RECORDS_PER_DAY: Final = 100
CLAIM_UPDATES_PER_DAY: Final = 10


class PkiCalls:
    """A node's side of the PKI: its calls, its submissions and its pulls."""

    def __init__(self, node: NodeService) -> None:
        self.node = node
        self._pki_sync = trio.Lock()
        # Appends at the PKI node: what a stranger can add to the PKI.
        self._home_claims = DailyLimit(node.settings.max_daily_signups)
        self._new_nodes = DailyLimit(node.settings.max_daily_nodes)
        self._node_records = DailyLimit(NODE_RECORDS_PER_DAY)
        self._claim_updates = DailyLimit(CLAIM_UPDATES_PER_DAY)

    def log(self) -> PkiLog:
        if self.node.pki is None:
            raise Unavailable("this node keeps no PKI log")
        return self.node.pki

    def claim(self, username: str) -> Claim:
        claim = self.log().lookup(username)
        if claim is None:
            raise NotFound(f"unknown user {username!r}")
        return claim

    async def _claim_synced(self, username: str) -> Claim:
        """The claim for `username`, pulling new PKI entries first when this mirror lacks it."""
        if self.log().lookup(username) is None and self.log().role == "mirror":
            await self.sync_on_demand()
        return self.claim(username)

    async def submit(self, record: Record, submitter: str) -> dict[str, Any]:
        """Have a PKI record appended: here on the PKI node (if `submitter` may have it
        appended, see `_admit`), else there (then pull it). From a mirror, the PKI node sees
        this node as the submitter."""
        node, pki = self.node, self.log()
        if pki.role == "root":
            release = self._admit(record, submitter)
            try:
                entry = await threads.run_sync(pki.append, record, int(node.clock()))
            except BaseException:
                release()
                raise
            return {"seq": entry.seq, "hash": entry.hash}
        if node.network is None:
            raise Unavailable("this node cannot reach its PKI node")
        reply: dict[str, Any] = await node.network.call(
            pki.pki_node, "pki.submit", {"record": record_to_cbor(record)}
        )
        # It answered: pull at once (a backoff from an earlier failure must not leave the
        # record just appended unknown here, as a signup's first command would find it).
        node.pki_health.succeeded(node.clock())
        await self.sync_on_demand()
        return reply

    def _admit(self, record: Record, submitter: str) -> Callable[[], None]:
        """At the PKI node: refuse what `submitter` may not have appended (protocols.pki
        `check_submission`) and count it against the daily limits; returns what gives the
        count back if the append fails. A record already held is answered, never counted."""
        pki = self.log()
        check_submission(pki.index, record, submitter, pki.pki_node)
        now = self.node.clock()
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

    async def sync_pki(self) -> SyncResult | None:
        """Pull and apply new entries from the PKI node until caught up (mirrors only).

        Never re-entered: a pull whose call fails may ask for a sync again (to learn new
        addresses) from inside this one, and that inner request returns None at once. Every
        pull is recorded in `pki_health`, success or error, and errors are raised.
        """
        node, pki = self.node, self.log()
        if pki.role == "root" or node.network is None:
            return None
        if self._pki_sync.statistics().owner is trio.lowlevel.current_task():
            return None
        async with self._pki_sync:
            try:
                while True:
                    page = await node.network.call(
                        pki.pki_node, "pki.entries", {"after": pki.seq(), "limit": PKI_PAGE}
                    )
                    if not isinstance(page, dict):
                        raise MalformedInput("the PKI node sent a malformed page")
                    result = await threads.run_sync(
                        pki.apply_from_mirror,
                        page.get("entries"),
                        page.get("head"),
                        int(node.clock()),
                    )
                    if result.refusal is not None or result.applied == 0:
                        node.pki_health.succeeded(node.clock())
                        return result
            except PyrgosError as exc:
                node.pki_health.failed(node.clock(), exc.message)
                raise

    async def pull_pki(self) -> None:
        """`sync_pki` for callers that go on whatever happens: a failure is logged and kept in
        `pki_health` (a fault in this node's own code too), never raised."""
        try:
            await self.node.sync_pki()
        except PyrgosError as exc:
            log.warning("PKI sync failed: %s", exc.message)
        except Exception:
            log.exception("PKI sync failed")
            self.node.pki_health.failed(self.node.clock(), "internal error (see the node's log)")

    async def sync_on_demand(self) -> None:
        """Pull new PKI entries before answering from the local copy; a PKI node that is away
        (recorded in `pki_health`) leaves the answer to what this node already holds. While
        it is away, lookups of unknown names try it at most once per RETRY_FIRST seconds:
        strangers' lookups cannot turn a mirror into a dialler of its PKI node."""
        node, health = self.node, self.node.pki_health
        if (
            health.failures
            and health.last_error_time is not None
            and node.clock() - health.last_error_time < RETRY_FIRST
        ):
            return
        with trio.move_on_after(PKI_SYNC_TIMEOUT) as scope:
            # Never the caller's failure: a signup whose claim the PKI took must not fail.
            await node.pull_pki()
        if scope.cancelled_caught:
            health.failed(node.clock(), f"the PKI node did not answer within {PKI_SYNC_TIMEOUT} s")

    # -- calls --------------------------------------------------------------------------------

    async def pki_lookup(self, request: PkiLookup, requester: bytes) -> PkiLookupReply:
        if request.identity is None:
            assert request.username is not None  # the request type holds one of the two
            return PkiLookupReply(await self._claim_synced(request.username))
        username = self.log().owner(request.identity)
        if username is None and self.log().role == "mirror":
            await self.sync_on_demand()
            username = self.log().owner(request.identity)
        if username is None:
            raise NotFound("no user has this identity key (it is unknown, or was replaced)")
        return PkiLookupReply(self.claim(username))

    async def pki_status(self, request: PkiStatus, requester: bytes) -> Report:
        status = self.log().status().to_cbor()
        if self.log().role == "mirror":
            status["pki_node_health"] = self.node.pki_health.to_cbor()
        return Report(status)

    async def pki_entries(self, request: PkiEntries, requester: bytes) -> Report:
        page = await threads.run_sync(self.log().page, request.after, request.limit)
        return Report(page.to_cbor())

    async def pki_submit(self, request: PkiSubmit, requester: bytes) -> PkiSubmitReply:
        """A record from another node or a client. A mirror checks it as the PKI node would
        before passing it on as its own submission, so it vouches only for what it may."""
        parsed = request.record
        submitter = requester.decode(errors="replace")
        pki = self.log()
        if pki.role == "mirror":
            if isinstance(parsed, Claim) and pki.lookup(parsed.username) is None:
                await self.sync_on_demand()
            check_submission(pki.index, parsed, submitter, pki.pki_node)
        return PkiSubmitReply.from_cbor(await self.submit(parsed, submitter))
