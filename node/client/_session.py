"""Accounts from the client's side: signup, login from any device, password change.

All key material is made and opened here; the node receives only public keys, signatures and
ciphertext.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Final

import trio

from node.client._api import NodeApi
from node.client._blocks import Blocks, new_upload_id, put_blocks, stage_dir_chunk
from protocols import accounts, champ, crypto
from protocols.accounts import LoginData
from protocols.bats import hashed_id
from protocols.blocks import sign_put
from protocols.cid import CID
from protocols.crypto import BoxingKey, KdfParams, LoginKeys, SigningKey
from protocols.cryptree import Capability, KeyBlock, Properties
from protocols.errors import AuthFailed, Corrupted, Denied, MalformedInput, Unavailable
from protocols.names import check_password, check_username
from protocols.pki import CLAIM_LIFETIME, Claim, next_expiry, record_to_cbor
from protocols.pointers import CONTEXT as POINTER_CONTEXT
from protocols.pointers import PointerUpdate
from protocols.writerdata import WriterData

RENEW_BEFORE: Final = 30 * 24 * 3600  # seconds before its expiry that a login renews a claim


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Session:
    """A logged-in user: the secrets their password unlocked, and the node they talk to."""

    api: NodeApi
    username: str
    login: LoginKeys
    data: LoginData

    @property
    def identity(self) -> SigningKey:
        return self.data.identity

    @property
    def owner(self) -> CID:
        return self.data.home.owner

    @property
    def home(self) -> Capability:
        return self.data.home

    @property
    def mirror_id(self) -> bytes:
        return hashed_id(self.data.mirror_bat)

    def __repr__(self) -> str:
        return f"Session(username={self.username!r}, node={self.api.url!r})"


async def _derive(username: str, password: str, params: KdfParams) -> LoginKeys:
    # Argon2id with 256 MiB takes about a second: keep the event loop free meanwhile.
    return await trio.to_thread.run_sync(crypto.derive_login_keys, username, password, params)


async def _node_allows_test_kdf(api: NodeApi) -> bool:
    info = await api.call("node.info")
    return bool(info.get("test_mode"))


async def signup(
    api: NodeApi, username: str, password: str, *, token: str | None = None
) -> Session:
    """Create an account homed on the node behind `api` and return its session; `token` is
    the node's signup token, when it needs one."""
    check_username(username)
    check_password(username, password)
    node_id = (await api.node_id()).decode()
    test_mode = await _node_allows_test_kdf(api)
    params = KdfParams.test_profile() if test_mode else KdfParams.production()
    login = await _derive(username, password, params)
    identity = SigningKey.generate()
    boxing = BoxingKey.generate()
    mirror_bat = crypto.random_bytes(32)
    owner = identity.public.key_hash()
    home = Capability(
        owner=owner,
        writer=owner,
        label=crypto.random_bytes(32),
        bat=crypto.random_bytes(32),
        read_key=crypto.random_key(),
        write_key=crypto.random_key(),
    )
    stamp = now_ms()
    props = Properties(name=username, is_dir=True, size=0, modified=stamp, created=stamp)
    blocks = Blocks(api)
    tree = await stage_dir_chunk(
        blocks, champ.EMPTY_ROOT, home, 0, KeyBlock(crypto.random_key()), props, [], None,
        hashed_id(mirror_bat),
    )  # fmt: skip
    writer_data = WriterData(controller=owner, tree=tree, login=params, boxing=boxing.public)
    root = await blocks.put(writer_data.encode())
    staged = [(cid, blocks.staged[cid]) for cid in blocks.reachable_staged(root)]
    data = LoginData(identity=identity, boxing=boxing, home=home, mirror_bat=mirror_bat)
    claim = Claim.create(identity, username, node_id, int(time.time()) + CLAIM_LIFETIME)
    await api.call(
        "account.signup",
        {
            "claim": claim.to_cbor(),
            "login_key": login.signing.public.to_cbor(),
            "login_data": data.seal(login.root_key, username),
            "mirror_bat": mirror_bat,
            "pointer": PointerUpdate.create(identity, None, root, 1).encode(),
            "blocks": [[cid.codec, block] for cid, block in staged],
            "sigs": [sign_put(identity, cid) for cid, _ in staged],
        }
        | ({} if token is None else {"token": token}),
    )
    api.route(owner, node_id)
    return Session(api, username, login, data)


async def login_keys(api: NodeApi, username: str, password: str) -> LoginKeys:
    """Fetch the user's public KDF parameters and derive their login keys."""
    check_username(username)
    reply = await api.call("account.params", {"username": username})
    params = KdfParams.from_cbor(reply.get("params"))
    if not params.is_production_strength and not await _node_allows_test_kdf(api):
        raise Denied("the node offers KDF parameters below the production strength")
    return await _derive(username, password, params)


async def resume(api: NodeApi, username: str, login: LoginKeys) -> Session:
    """Open a session from derived login keys: one round trip, no KDF."""
    signed = now_ms()
    sealed = await api.call(
        "account.login",
        {
            "username": username,
            "time": signed,
            "sig": accounts.sign_timed(login.signing, accounts.LOGIN, [username], signed),
        },
    )
    if not isinstance(sealed, bytes):
        raise Corrupted("the node returned malformed login data")
    data = LoginData.open(login.root_key, username, sealed)
    claim = Claim.from_cbor(await api.call("pki.lookup", {"username": username}))
    if claim.identity != data.home.owner:
        raise Corrupted("the PKI names another identity for this user than their login data")
    if claim.expiry - int(time.time()) < RENEW_BEFORE:
        await renew_claim(api, data.identity, claim)
    api.route(data.home.owner, claim.home)
    return Session(api, username, login, data)


async def renew_claim(api: NodeApi, identity: SigningKey, claim: Claim) -> Claim:
    """Extend `claim` (same key, home and mirrors) by a year through the PKI node. A name
    whose claim runs out can be taken by someone else, so every login within RENEW_BEFORE of
    the expiry renews it; a PKI node that cannot be reached is tried again at the next."""
    renewed = Claim.create(
        identity,
        claim.username,
        claim.home,
        next_expiry(claim, int(time.time())),
        mirrors=claim.mirrors,
    )
    try:
        await api.call("pki.submit", {"record": record_to_cbor(renewed)})
    except Unavailable:
        return claim
    return renewed


async def login(api: NodeApi, username: str, password: str) -> Session:
    """Log in from any device: nothing is needed but the username and the password."""
    return await resume(api, username, await login_keys(api, username, password))


async def change_password(session: Session, current: str, new: str) -> Session:
    """Re-seal the login data under keys from `new` and a fresh salt; identity is unchanged."""
    check_password(session.username, new)
    api, username = session.api, session.username
    old_keys = await login_keys(api, username, current)
    if old_keys.signing.public != session.login.signing.public:
        raise AuthFailed("the current password is wrong")
    pointer_raw = await api.call("pointer.get", {"writer": session.owner, "owner": session.owner})
    if not isinstance(pointer_raw, bytes):
        raise Corrupted("the account has no root pointer")
    pointer = PointerUpdate.decode(pointer_raw)
    session.identity.public.verify(pointer.signed_part, pointer.signature, POINTER_CONTEXT)
    blocks = Blocks(api)
    writer_data = WriterData.decode(await blocks.get(pointer.new))
    if writer_data.login is None:
        raise MalformedInput("the identity root publishes no login parameters")
    fresh = KdfParams(writer_data.login.opslimit, writer_data.login.memlimit,
                      crypto.random_bytes(crypto.KDF_SALT_BYTES))  # fmt: skip
    new_keys = await _derive(username, new, fresh)
    root_block = replace(writer_data, login=fresh).encode()
    root = await blocks.put(root_block)
    upload = new_upload_id()
    await put_blocks(api, session.owner, session.identity, [(root, root_block)], upload)
    update = PointerUpdate.create(
        session.identity, pointer.new, root, pointer.sequence + 1
    ).encode()
    login_data = session.data.seal(new_keys.root_key, username)
    signed = now_ms()
    payload: list[object] = [username, new_keys.signing.public.to_cbor(), login_data, update]
    await api.call(
        "account.update",
        {
            "username": username,
            "login_key": new_keys.signing.public.to_cbor(),
            "login_data": login_data,
            "pointer": update,
            "uploads": [upload],
            "time": signed,
            "sig": accounts.sign_timed(old_keys.signing, accounts.UPDATE_LOGIN, payload, signed),
        },
    )
    return Session(api, username, new_keys, session.data)
