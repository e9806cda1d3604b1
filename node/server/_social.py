"""The follow-request inbox (DESIGN §10, keyspace INBOX): sealed requests kept for their target.

The node stores each request under its target only; it cannot tell who sent it (the request
is boxed to the target and every one has the same length). Anyone may send; only the target,
by a signature of its identity key over the current time, lists and removes.
Key: owner_prefix(target) ‖ sha256(request)[:16] -> request.
"""

from __future__ import annotations

import hashlib
from typing import Any

from node.store import Space, Store, owner_prefix
from protocols import accounts
from protocols.cid import CID, CODEC_DAG_CBOR
from protocols.crypto import VerifyKey
from protocols.errors import AuthFailed, MalformedInput, NotFound, RateLimited
from protocols.pki import DailyLimit
from protocols.social_limits import (
    FOLLOW_SEALED_BYTES,
    INBOX_ID_BYTES,
    MAX_PENDING,
    SENDS_PER_PEER,
    SENDS_PER_SOURCE,
)


def _key_hash(args: dict[str, Any], name: str) -> CID:
    value = args.get(name)
    if not isinstance(value, CID) or not value.is_identity or value.codec != CODEC_DAG_CBOR:
        raise MalformedInput(f"argument {name!r} must be a public-key hash")
    return value


def _local_user(store: Store, user: CID) -> None:
    if store.get(Space.WRITERS, user.raw) != user.raw:
        raise NotFound("no user with this identity key is homed on this node")


def _check_signed(args: dict[str, Any], owner: CID, payload: list[object], now_ms: int) -> None:
    """AuthFailed unless the owner's identity key signed `payload` within ±5 minutes."""
    signed, sig = args.get("time"), args.get("sig")
    if not isinstance(signed, int) or isinstance(signed, bool):
        raise MalformedInput("argument 'time' must be an integer of milliseconds")
    if not isinstance(sig, bytes):
        raise MalformedInput("argument 'sig' must be a signature (bytes)")
    try:
        accounts.check_timed(
            VerifyKey.from_key_hash(owner), accounts.SOCIAL, payload, signed, sig, now_ms
        )
    except AuthFailed as exc:
        if abs(now_ms - signed) > accounts.MAX_SKEW_MS:
            raise
        raise AuthFailed("this request is not signed by the user's identity key") from exc


class Inbox:
    """The inbox rules; the caller holds the node's write lock around `send` and `remove`."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._sources = DailyLimit(SENDS_PER_SOURCE)
        self._peers = DailyLimit(SENDS_PER_PEER)

    def send(self, args: dict[str, Any], source: str, relayed: bool, now: float) -> bool:
        """Store a sealed request for its target; a duplicate is accepted and stored once.
        `source` is the caller (a client address, or the node that relayed the call)."""
        target = _key_hash(args, "target")
        request = args.get("request")
        if not isinstance(request, bytes) or len(request) != FOLLOW_SEALED_BYTES:
            raise MalformedInput(f"a sealed follow request is exactly {FOLLOW_SEALED_BYTES} bytes")
        _local_user(self._store, target)
        prefix = owner_prefix(target.raw)
        key = prefix + hashlib.sha256(request).digest()[:INBOX_ID_BYTES]
        if self._store.has(Space.INBOX, key):
            return True
        pending = sum(1 for _ in self._store.keys(Space.INBOX, prefix))
        if pending >= MAX_PENDING:
            raise RateLimited(
                f"this user's inbox holds {MAX_PENDING} follow requests already: try again later"
            )
        limit = self._peers if relayed else self._sources
        limit.take(source, now, "follow requests sent from one source")
        try:
            self._store.put(Space.INBOX, key, request, sync=True)
        except BaseException:
            limit.give_back(source)
            raise
        return True

    def list(self, args: dict[str, Any], now_ms: int) -> list[dict[str, bytes]]:
        """The pending requests of the signing owner (at most MAX_PENDING), oldest id first."""
        owner = _key_hash(args, "owner")
        _check_signed(args, owner, [owner], now_ms)
        _local_user(self._store, owner)
        prefix = owner_prefix(owner.raw)
        found: list[dict[str, bytes]] = []
        for key, request in self._store.items(Space.INBOX, prefix):
            found.append({"id": key[len(prefix) :], "request": request})
            if len(found) >= MAX_PENDING:
                break
        return found

    def remove(self, args: dict[str, Any], now_ms: int) -> int:
        """Remove the listed requests of the signing owner; the number that were there."""
        owner = _key_hash(args, "owner")
        ids = args.get("ids")
        if (
            not isinstance(ids, list)
            or not 1 <= len(ids) <= MAX_PENDING
            or not all(isinstance(i, bytes) and len(i) == INBOX_ID_BYTES for i in ids)
        ):
            raise MalformedInput(
                f"ids must be a list of 1-{MAX_PENDING} request ids of {INBOX_ID_BYTES} bytes"
            )
        _check_signed(args, owner, [owner, ids], now_ms)
        _local_user(self._store, owner)
        prefix = owner_prefix(owner.raw)
        keys = {prefix + i for i in ids}
        present = [key for key in keys if self._store.has(Space.INBOX, key)]
        if present:
            with self._store.batch(sync=True) as batch:
                for key in present:
                    batch.delete(Space.INBOX, key)
        return len(present)
