"""Following and trusted keys from a user's side (DESIGN §7, §10).

The social graph lives only in the user's own encrypted space (`/<me>/.pyrgos/social`, and the
keystore `/<me>/.pyrgos/keys`); follow requests and their answers travel sealed through the
target's inbox at its home node, which learns neither sender nor content.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from node.client import _typed
from node.client._api import NodeApi, Route
from node.client._fs import FileSystem
from protocols import accounts, contacts, crypto, methods
from protocols.cid import CID
from protocols.contacts import KeyStore
from protocols.crypto import BoxingPublicKey, VerifyKey
from protocols.cryptree import Capability
from protocols.errors import (
    Conflict,
    Corrupted,
    Denied,
    MalformedInput,
    NotFound,
    PyrgosError,
    TooLarge,
)
from protocols.names import check_username
from protocols.pki import Claim
from protocols.pointers import CONTEXT as POINTER_CONTEXT
from protocols.pointers import PointerUpdate
from protocols.social import (
    MAX_STATE_BYTES,
    REPLY_BYTES,
    Followee,
    FollowRequest,
    Kind,
    SocialState,
    open_request,
    seal_request,
)
from protocols.writerdata import WriterData

STATE_DIR: Final = ".pyrgos"  # hidden: `ls` skips names starting with "."
SOCIAL_FILE: Final = "social"
KEYS_FILE: Final = "keys"
SHARED_DIR: Final = "shared"  # /<me>/shared/<them>/: what I share with each follower
Clock = Callable[[], int]  # milliseconds since the epoch


@dataclass(frozen=True)
class PendingRequest:
    """A follow request to me: who, when they sent it (their clock, ms), and whether the
    identity key the PKI names for them now differs from the one I recorded."""

    username: str
    time: int
    key_changed: bool
    ids: tuple[bytes, ...] = field(repr=False)  # every inbox copy of their requests


@dataclass(frozen=True)
class Requests:
    """`pyrgos requests`: follow requests waiting for my answer, and what became of mine."""

    pending: list[PendingRequest]
    accepted: list[str]  # followees that accepted my request: I now read what they share
    rejected: list[str]  # followees that rejected it: dropped from my following
    dropped: int  # unreadable, forged or stale inbox items, removed
    warnings: list[str]


@dataclass(frozen=True)
class Fingerprint:
    username: str
    identity: CID
    digits: str  # 12 groups of 5 digits
    verified: bool  # compared out of band (`pyrgos verify`)
    changed: bool  # the PKI now names another key than this recorded one


# -- paths and state files --------------------------------------------------------------


def _me(fs: FileSystem) -> str:
    return fs.require_session().username


def _state_path(fs: FileSystem, name: str) -> str:
    return f"/{_me(fs)}/{STATE_DIR}/{name}"


def _shared_path(fs: FileSystem, username: str) -> str:
    return f"/{_me(fs)}/{SHARED_DIR}/{username}"


async def _read_state_file(fs: FileSystem, name: str, limit: int) -> bytes | None:
    try:
        return await fs.read_bytes(_state_path(fs, name), limit)
    except NotFound:
        return None
    except TooLarge as exc:
        raise Corrupted(f"{_state_path(fs, name)} is damaged: {exc.message}") from None


async def _write_state_file(fs: FileSystem, name: str, data: bytes) -> None:
    try:
        await fs.write_bytes(_state_path(fs, name), data)
    except NotFound:  # the first social action: make the hidden folder
        await fs.mkdir(f"/{_me(fs)}/{STATE_DIR}", parents=True)
        await fs.write_bytes(_state_path(fs, name), data)


async def load_state(fs: FileSystem) -> SocialState:
    data = await _read_state_file(fs, SOCIAL_FILE, MAX_STATE_BYTES)
    if data is None:
        return SocialState()
    try:
        return SocialState.decode(data)
    except (MalformedInput, TooLarge) as exc:
        raise Corrupted(f"{_state_path(fs, SOCIAL_FILE)} is damaged: {exc.message}") from None


async def _save_state(fs: FileSystem, state: SocialState) -> None:
    await _write_state_file(fs, SOCIAL_FILE, state.encode())


async def load_keys(fs: FileSystem) -> KeyStore:
    data = await _read_state_file(fs, KEYS_FILE, contacts.MAX_STORE_BYTES)
    if data is None:
        return KeyStore({})
    try:
        return KeyStore.decode(data)
    except (MalformedInput, TooLarge) as exc:
        raise Corrupted(f"{_state_path(fs, KEYS_FILE)} is damaged: {exc.message}") from None


async def _save_keys(fs: FileSystem, store: KeyStore) -> None:
    await _write_state_file(fs, KEYS_FILE, store.encode())


# -- contacts: the PKI, trusted keys, boxing keys ----------------------------------------


async def _claim(api: NodeApi, username: str) -> Claim:
    """The user's PKI claim, its signatures checked here: never on the node's word."""
    check_username(username)
    reply = await _typed.request(api, methods.PkiLookup(username), methods.PkiLookupReply)
    claim = reply.claim
    try:
        claim.verify()
    except PyrgosError as exc:
        raise Corrupted(f"the node returned a bad PKI claim for {username}: {exc}") from None
    if claim.username != username:
        raise Corrupted(f"the node returned the PKI claim of another user than {username}")
    return claim


def _changed_message(username: str) -> str:
    return (
        f"the identity key of {username} has changed since you first saw it: this may be"
        f" someone else. Ask {username} for the fingerprint `pyrgos fingerprint` shows them,"
        f" over a channel you trust, and run `pyrgos verify {username} FINGERPRINT`"
    )


async def _trust(fs: FileSystem, username: str, identity: CID, clock: Clock) -> None:
    """The TOFU check of an action with a contact: record a first key, refuse a changed one
    (Denied) until it is verified."""
    store = await load_keys(fs)
    updated, verdict = contacts.check_contact(store, username, identity, clock())
    if verdict == "changed":
        raise Denied(_changed_message(username))
    if verdict == "new":
        await _save_keys(fs, updated)


async def _public_block(api: NodeApi, owner: CID, cid: CID) -> bytes:
    """A public block (a WriterData) of another user, read through their home."""
    return await api.get_block(cid, route=Route(owner))


async def _boxing_key(api: NodeApi, identity: CID) -> BoxingPublicKey:
    """The boxing key in the user's identity WriterData, its pointer signature checked."""
    call = methods.PointerGet(identity, identity)
    raw = (await _typed.request(api, call, methods.PointerGetReply)).update
    if raw is None:
        raise NotFound("this user has no root: their signup was not completed")
    try:
        pointer = PointerUpdate.decode(raw)
        VerifyKey.from_key_hash(identity).verify(pointer.signed_part, pointer.signature,
                                                 POINTER_CONTEXT)  # fmt: skip
    except PyrgosError as exc:
        raise Corrupted(f"the user's root pointer is not valid: {exc}") from None
    block = await _public_block(api, identity, pointer.new)
    try:
        writer_data = WriterData.decode(block)
    except PyrgosError as exc:
        raise Corrupted(f"the user's root is not valid: {exc}") from None
    if writer_data.controller != identity or writer_data.boxing is None:
        raise Corrupted("the user's root publishes no boxing key")
    return writer_data.boxing


# -- the inbox -----------------------------------------------------------------------------


def _signed(fs: FileSystem, payload: list[object], clock: Clock) -> tuple[int, bytes]:
    """(time, signature) of an inbox call."""
    session = fs.require_session()
    signed = clock()
    return signed, accounts.sign_timed(session.identity, accounts.SOCIAL, payload, signed)


async def _inbox(fs: FileSystem, clock: Clock) -> list[tuple[bytes, bytes]]:
    """(id, sealed request) of every request in my inbox."""
    owner = fs.require_session().owner
    call = methods.SocialList(owner, *_signed(fs, [owner], clock))
    return list((await _typed.request(fs.api, call, methods.SocialListReply)).items)


async def _remove(fs: FileSystem, ids: list[bytes], clock: Clock) -> None:
    if not ids:
        return
    owner = fs.require_session().owner
    call = methods.SocialRemove(owner, tuple(ids), *_signed(fs, [owner, ids], clock))
    await _typed.request(fs.api, call, methods.Count)


async def _send(
    fs: FileSystem,
    claim: Claim,
    kind: Kind,
    entry: Capability | None,
    reply: bytes,
    clock: Clock,
) -> None:
    request = FollowRequest.create(
        fs.require_session().identity, kind, _me(fs), claim.username, entry, reply, clock()
    )
    sealed = seal_request(request, await _boxing_key(fs.api, claim.identity))
    await _typed.request(fs.api, methods.SocialSend(claim.identity, sealed), methods.Done)


@dataclass
class _Opened:
    """Inbox items read and checked: by sender, and what cannot be used."""

    valid: list[tuple[bytes, FollowRequest, bool]]  # (id, request, key changed)
    bad: list[bytes]  # unreadable, malformed, forged, of unknown senders


async def _open_inbox(fs: FileSystem, clock: Clock) -> _Opened:
    me, boxing = _me(fs), fs.require_session().data.boxing
    store = await load_keys(fs)
    claims: dict[str, Claim | None] = {}
    opened = _Opened([], [])
    for request_id, sealed in await _inbox(fs, clock):
        try:
            request = open_request(boxing, sealed)
        except (MalformedInput, Corrupted):
            opened.bad.append(request_id)
            continue
        if request.sender not in claims:
            try:
                claims[request.sender] = await _claim(fs.api, request.sender)
            except NotFound:
                claims[request.sender] = None
        claim = claims[request.sender]
        try:
            if claim is None:
                raise NotFound("unknown sender")
            request.verify(VerifyKey.from_key_hash(claim.identity), me)
        except PyrgosError:  # forged, misaddressed, or from nobody the PKI knows
            opened.bad.append(request_id)
            continue
        known = store.keys.get(request.sender)
        changed = known is not None and known.identity != claim.identity
        opened.valid.append((request_id, request, changed))
    return opened


# -- the commands -------------------------------------------------------------------------


async def follow(fs: FileSystem, username: str, *, clock: Clock | None = None) -> None:
    """Ask `username` to let me follow them: my request carries a read-only capability of
    `/<me>/shared/<them>/` and a fresh reply key; they answer through my inbox."""
    clock = clock or fs.api.now_ms
    if username == _me(fs):
        raise Conflict("you cannot follow yourself")
    claim = await _claim(fs.api, username)  # NotFound for an unknown user: nothing changed
    await _trust(fs, username, claim.identity, clock)
    state = await load_state(fs)
    known = state.following.get(username)
    if known is not None and known.cap is not None:
        raise Conflict(f"you already follow {username}")
    entry = await _shared_folder(fs, username)
    reply = crypto.random_bytes(REPLY_BYTES) if known is None else known.reply
    state.following[username] = Followee(None, reply, clock())
    await _save_state(fs, state)  # first: an answer must find the reply key it echoes
    await _send(fs, claim, "follow", entry, reply, clock)


async def _shared_folder(fs: FileSystem, username: str) -> Capability:
    """The read-only capability of `/<me>/shared/<them>/`, made if missing."""
    path = _shared_path(fs, username)
    try:
        return (await fs.capability(path)).read_only()
    except NotFound:
        await fs.mkdir(path, parents=True)
        return (await fs.capability(path)).read_only()


async def requests(fs: FileSystem, *, clock: Clock | None = None) -> Requests:
    """The follow requests waiting for my answer (one per sender, the latest), after applying
    the answers to my own requests (an accept stores the followee's capability, a reject drops
    the pending entry) and removing them, and anything unreadable, from the inbox."""
    clock = clock or fs.api.now_ms
    opened = await _open_inbox(fs, clock)
    state = await load_state(fs)
    done = list(opened.bad)
    accepted: list[str] = []
    rejected: list[str] = []
    warnings: list[str] = []
    waiting: dict[str, list[tuple[bytes, FollowRequest, bool]]] = {}
    changed_state = False
    for request_id, request, key_changed in opened.valid:
        if request.kind == "follow":
            waiting.setdefault(request.sender, []).append((request_id, request, key_changed))
            continue
        mine = state.following.get(request.sender)
        if mine is None or not crypto.constant_time_equal(mine.reply, request.reply):
            done.append(request_id)  # not an answer to a request of mine: stale or replayed
            continue
        if key_changed:  # kept until the key is verified
            warnings.append(_changed_message(request.sender) + "; their answer waits until then")
            continue
        done.append(request_id)
        if request.kind == "accept":
            state.following[request.sender] = Followee(request.entry, mine.reply, mine.since)
            accepted.append(request.sender)
        else:
            del state.following[request.sender]
            rejected.append(request.sender)
        changed_state = True
    pending = []
    for sender, items in sorted(waiting.items()):
        latest = max(items, key=lambda item: item[1].time)
        if latest[2]:
            warnings.append(_changed_message(sender))
        ids = tuple(request_id for request_id, _, _ in items)
        pending.append(PendingRequest(sender, latest[1].time, latest[2], ids))
    if changed_state:
        await _save_state(fs, state)
    await _remove(fs, done, clock)
    return Requests(pending, sorted(accepted), sorted(rejected), len(opened.bad), warnings)


async def _request_from(
    fs: FileSystem, username: str, clock: Clock
) -> tuple[FollowRequest, list[bytes], bool]:
    """The latest follow request from `username` in my inbox, every id of theirs, and
    whether their key changed; NotFound when they sent none."""
    check_username(username)
    opened = await _open_inbox(fs, clock)
    theirs = [
        item for item in opened.valid if item[1].sender == username and item[1].kind == "follow"
    ]
    if not theirs:
        raise NotFound(f"no follow request from {username}: `pyrgos requests` lists them")
    _, latest, changed = max(theirs, key=lambda item: item[1].time)
    return latest, [request_id for request_id, _, _ in theirs], changed


async def accept(
    fs: FileSystem, username: str, *, follow_back: bool = False, clock: Clock | None = None
) -> None:
    """Let `username` follow me: make `/<me>/shared/<them>/`, record them as a follower and
    send them its read-only capability; with `follow_back`, ask to follow them too."""
    clock = clock or fs.api.now_ms
    request, ids, changed = await _request_from(fs, username, clock)  # NotFound: no change
    if changed:
        raise Denied(_changed_message(username))
    claim = await _claim(fs.api, username)
    if claim.identity != request.identity:  # the PKI moved on since the request was checked
        raise Denied(_changed_message(username))
    await _trust(fs, username, claim.identity, clock)
    entry = await _shared_folder(fs, username)
    state = await load_state(fs)
    state.followers.setdefault(username, clock())
    await _save_state(fs, state)
    await _send(fs, claim, "accept", entry, request.reply, clock)
    await _remove(fs, ids, clock)
    if follow_back:
        known = state.following.get(username)
        if known is None or known.cap is None:
            await follow(fs, username, clock=clock)


async def reject(fs: FileSystem, username: str, *, clock: Clock | None = None) -> None:
    """Decline `username`'s follow request: they are told, and it leaves my inbox."""
    clock = clock or fs.api.now_ms
    request, ids, _ = await _request_from(fs, username, clock)
    claim = await _claim(fs.api, username)
    if claim.identity == request.identity:  # else the answer would go to another key
        await _send(fs, claim, "reject", None, request.reply, clock)
    await _remove(fs, ids, clock)


async def followers(fs: FileSystem) -> list[tuple[str, int]]:
    """(username, since ms) of everyone who follows me, by name."""
    return sorted((await load_state(fs)).followers.items())


async def following(fs: FileSystem) -> list[tuple[str, Followee]]:
    """(username, record) of everyone I follow or asked to (cap None: pending), by name."""
    return sorted((await load_state(fs)).following.items())


async def unfollow(fs: FileSystem, username: str) -> None:
    """Forget `username`'s folder for me (or my pending request); nothing is sent."""
    state = await load_state(fs)
    if state.following.pop(check_username(username), None) is None:
        raise NotFound(f"you do not follow {username}")
    await _save_state(fs, state)


async def revoke_shares(fs: FileSystem, username: str) -> list[str]:
    """Unshare everything shared with `username` (key rotation, DESIGN §6); the paths where
    nothing was found to rotate (moved or removed since they were shared)."""
    from node.client import _sharing  # imported here: sharing builds on this module

    return await _sharing.revoke_all(fs, username)


async def remove_follower(fs: FileSystem, username: str) -> list[str]:
    """Stop `username` following me: revoke what I shared with them, delete
    `/<me>/shared/<them>/` and drop them from my followers. Returns the shared paths where
    nothing was found to rotate (moved or removed since they were shared)."""
    state = await load_state(fs)
    if check_username(username) not in state.followers:
        raise NotFound(f"{username} does not follow you")
    missing = await revoke_shares(fs, username)
    with contextlib.suppress(NotFound):
        await fs.remove(_shared_path(fs, username), recursive=True)
    del state.followers[username]
    await _save_state(fs, state)
    return missing


async def fingerprint(
    fs: FileSystem, username: str | None = None, *, clock: Clock | None = None
) -> Fingerprint:
    """My own safety number, or the one of the key I hold for `username` (recorded now if
    this is the first time I see them), and whether the PKI names another key now."""
    clock = clock or fs.api.now_ms
    if username is None or username == _me(fs):
        me = fs.require_session().owner
        return Fingerprint(_me(fs), me, contacts.fingerprint(me), True, False)
    claim = await _claim(fs.api, username)
    store = await load_keys(fs)
    updated, verdict = contacts.check_contact(store, username, claim.identity, clock())
    if verdict == "new":
        await _save_keys(fs, updated)
    held = updated.keys[username]
    return Fingerprint(
        username,
        held.identity,
        contacts.fingerprint(held.identity),
        held.verified,
        verdict == "changed",
    )


async def verify(fs: FileSystem, username: str, digits: str, *, clock: Clock | None = None) -> None:
    """Record the key the PKI names for `username` as verified, if `digits` is its
    fingerprint (compared out of band); Denied, nothing changed, if it is not."""
    clock = clock or fs.api.now_ms
    contacts.normalise_fingerprint(digits)  # a typo is MalformedInput before any lookup
    claim = await _claim(fs.api, username)
    store = await load_keys(fs)
    await _save_keys(fs, contacts.verify(store, username, claim.identity, digits, clock()))
