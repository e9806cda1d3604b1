"""Accounts and sessions: signup, login, password change, logout, and the mirror BATs a signup
registers. Owns Space.ACCOUNTS (username -> CBOR {identity, login_key, data}), Space.SESSIONS
(owner_prefix(owner) ‖ session id -> CBOR expiry) and Space.BATS (hashed id -> mirror BAT).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from node import threads
from node.server import _writers
from node.server._blocks import close_uploads, usage_record, validate_blocks
from node.store import Batch, Space, Store, owner_prefix
from protocols import accounts, bats, cbor
from protocols.cid import CID
from protocols.crypto import KdfParams, VerifyKey
from protocols.errors import Conflict, Denied, MalformedInput, NotFound, QuotaExceeded, RateLimited
from protocols.methods import (
    AccountLogin,
    AccountLoginReply,
    AccountParams,
    AccountParamsReply,
    AccountSignup,
    AccountUpdate,
    Done,
    SessionCheck,
    SessionEnd,
    SessionReply,
)
from protocols.pki import Claim, DailyLimit
from protocols.pointers import PointerUpdate, check_update
from protocols.writerdata import WriterData

if TYPE_CHECKING:
    from node.server._service import NodeService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Signup:
    """A signup that passed every check of this node, ready to claim and store."""

    claim: Claim
    blocks: list[tuple[CID, bytes]]
    account: bytes
    mirror_bat: bytes
    pointer: PointerUpdate
    size: int


class Accounts:
    """The account and session calls, and the signup limits of this node."""

    def __init__(self, node: NodeService) -> None:
        self.node = node
        self.store: Store = node.store
        settings = node.settings
        # Signups here: what a stranger can add to the PKI through this node.
        self._signups = DailyLimit(settings.max_daily_signups)
        self._source_signups = DailyLimit(settings.max_source_signups)
        self._signing_up: set[str | CID] = set()  # names and keys of signups under way

    def _account(self, username: str) -> dict[str, Any]:
        raw = self.store.get(Space.ACCOUNTS, username.encode())
        if raw is None:
            raise NotFound(f"unknown user {username!r}")
        value: dict[str, Any] = cbor.decode(raw, limit=64 * 1024)
        return value

    def _check_kdf(self, params: KdfParams) -> None:
        if not params.is_production_strength and not self.node.settings.test_mode:
            raise Denied("this node refuses the small KDF profile (it is not in test mode)")

    def _check_signup(self, request: AccountSignup) -> _Signup:
        """Every check of a signup but the PKI's verdict, before anything is claimed or stored:
        a signup the node would refuse must never leave its name claimed (all or nothing)."""
        claim = request.claim
        claim.verify()
        if claim.home != self.node.settings.node_id:
            raise Denied("the claim names another home node")
        if claim.previous is not None:
            raise MalformedInput("a signup claims a name with a new key, not a key change")
        owner = claim.identity
        update = request.pointer
        blocks = validate_blocks(owner, request.blocks, request.sigs)
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
        if size > self.node.settings.default_quota:
            raise QuotaExceeded("the initial blocks exceed the quota")
        if self.store.has(Space.WRITERS, owner.raw):
            raise Conflict("this identity key is already registered")
        if self.store.has(Space.ACCOUNTS, claim.username.encode()):
            raise Conflict(f"the username {claim.username!r} is taken")
        account = cbor.encode(
            {
                "identity": owner,
                "login_key": request.login_key.to_cbor(),
                "data": request.login_data,
            }
        )
        return _Signup(claim, blocks, account, request.mirror_bat, update, size)

    def _take_signup(self, token: str | None, source: str) -> Callable[[], None]:
        """The signup token and the daily limits (per node, and per source unless the token
        was presented); returns what gives the counts back if the signup fails."""
        expected = self.node.settings.signup_token
        invited = bool(expected) and token is not None
        if expected and not (
            invited and secrets.compare_digest(str(token).encode(), expected.encode())
        ):
            raise Denied("this node signs up only with its signup token: ask its operator")
        now = self.node.clock()
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

    # -- sessions: what `logout` and a password change revoke ---------------------------------

    def open_session(
        self, batch: Batch, owner: CID, *, ended_all: bool = False
    ) -> tuple[bytes, int]:
        """A new session of `owner` (token, expiry), written in `batch`; expired sessions are
        dropped, and the oldest live ones past MAX_SESSIONS."""
        now = int(self.node.clock())
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
        token = self.node.random(accounts.SESSION_TOKEN_BYTES)
        expiry = now + accounts.SESSION_LIFETIME
        batch.put(Space.SESSIONS, prefix + accounts.session_id(token), cbor.encode(expiry))
        return token, expiry

    def _end_sessions(self, batch: Batch, owner: CID) -> None:
        for key in list(self.store.keys(Space.SESSIONS, owner_prefix(owner.raw))):
            batch.delete(Space.SESSIONS, key)

    def check_session(self, owner: CID, token: bytes | None) -> int:
        """The expiry of the live session of `owner` whose token the call carries, else Denied:
        a write needs the user's signatures and a session that logout or a password change can
        end."""
        if token is None:
            raise Denied("this call needs a session: log in (`pyrgos login USER`)")
        key = owner_prefix(owner.raw) + accounts.session_id(token)
        raw = self.store.get(Space.SESSIONS, key)
        expiry = None if raw is None else cbor.decode(raw)
        if not isinstance(expiry, int) or expiry <= int(self.node.clock()):
            raise Denied(
                "this device's session has ended (logged out, password changed or expired): "
                "log in again (`pyrgos login USER`)"
            )
        return expiry

    # -- calls --------------------------------------------------------------------------------

    async def signup(self, request: AccountSignup, requester: bytes, source: str) -> Done:
        node = self.node
        signup = await threads.run_sync(self._check_signup, request)
        claim, owner = signup.claim, signup.claim.identity
        if claim.username in self._signing_up or owner in self._signing_up:
            raise Conflict(f"a signup for {claim.username!r} or this key is already under way")
        give_back = self._take_signup(request.token, source)
        self._signing_up |= {claim.username, owner}
        try:
            # The PKI decides first (first come, first served, at the PKI node): a loser
            # writes nothing here. Nothing after it can refuse: all was checked above, and
            # the names and key under way are held against concurrent signups.
            await node.pki_calls.submit(claim, node.settings.node_id)
            async with node.write_lock:
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
                        usage_record(signup.size, 0, node.settings.default_quota),
                    )
        except BaseException:
            give_back()
            raise
        finally:
            self._signing_up -= {claim.username, owner}
        log.info("signed up a user")
        return Done()

    async def login_params(self, request: AccountParams, requester: bytes) -> AccountParamsReply:
        username = request.username
        claim = self.node.pki_calls.claim(username)
        pointer = self.node.pointers.pointer(claim.identity)
        if pointer is None:
            raise NotFound(f"user {username!r} has no root")
        writer_data = WriterData.decode(await self.node.blocks.source.get(pointer.new))
        if writer_data.login is None:
            raise NotFound(f"user {username!r} publishes no login parameters")
        return AccountParamsReply(claim.identity, writer_data.login)

    async def login(self, request: AccountLogin, requester: bytes) -> AccountLoginReply:
        """The sealed login data, for a signature by the login key, and a new session."""
        username = request.username
        account = self._account(username)
        accounts.check_timed(
            VerifyKey.from_cbor(account["login_key"]),
            accounts.LOGIN,
            [username],
            request.time,
            request.sig,
            int(self.node.clock() * 1000),
        )
        with self.store.batch() as batch:  # a session lost to a crash only means a new login
            token, expiry = self.open_session(batch, account["identity"])
        return AccountLoginReply(account["data"], token, expiry)

    async def update_login(self, request: AccountUpdate, requester: bytes) -> SessionReply:
        """Password change: new login key and data, and the identity root naming the new salt.

        Signed by the current login key, which only the current password derives (a device's
        session holds no password-derived secret). It ends every session of the user and opens
        one for the caller.
        """
        node, username = self.node, request.username
        account = self._account(username)
        update = request.update
        owner: CID = account["identity"]
        accounts.check_timed(
            VerifyKey.from_cbor(account["login_key"]),
            accounts.UPDATE_LOGIN,
            [username, request.login_key.to_cbor(), request.login_data, request.pointer],
            request.time,
            request.sig,
            int(node.clock() * 1000),
        )
        async with node.write_lock:
            node.migration.check_writable(owner)
            target = self.store.get_block(update.new.raw)
            params = WriterData.decode(target).login if target is not None else None
            if params is None:
                raise MalformedInput("the new identity root must publish the new login parameters")
            self._check_kdf(params)
            node.pointers.check_pointer(owner, update)
            # Sub-writers survive a password change: the new root's owner proofs are checked
            # and registered as in pointer.cas.
            registered = _writers.registration(
                self.store, owner, node.pointers.pointer(owner), update.new
            )
            account["login_key"] = request.login_key.to_cbor()
            account["data"] = request.login_data
            with self.store.batch(sync=True) as batch:
                batch.put(Space.ACCOUNTS, username.encode(), cbor.encode(account))
                batch.put(Space.POINTERS, owner.raw, update.encode())
                registered.apply(batch)
                close_uploads(self.store, batch, request.uploads)
                self._end_sessions(batch, owner)
                token, expiry = self.open_session(batch, owner, ended_all=True)
        return SessionReply(token, expiry)

    async def session_check(self, request: SessionCheck, requester: bytes) -> SessionReply:
        """Whether a device's saved session is still live, so that it learns at once, not at
        its next write, that it was logged out."""
        return SessionReply(None, self.check_session(request.owner, request.session))

    async def session_end(self, request: SessionEnd, requester: bytes) -> Done:
        """Logout: end this session (its token is the proof), or with `all` every session of
        the user (a live token is the proof). True when something was ended."""
        owner = request.owner
        key = owner_prefix(owner.raw) + accounts.session_id(request.session)
        if request.all:
            self.check_session(owner, request.session)
            with self.store.batch(sync=True) as batch:
                self._end_sessions(batch, owner)
            return Done()
        if not self.store.has(Space.SESSIONS, key):
            return Done(False)
        self.store.delete(Space.SESSIONS, key, sync=True)
        return Done()
