"""Accounts from the client's side: signup, login from any device, password change.

All key material is made and opened here; the node receives only public keys, signatures and
ciphertext.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Final

from node import threads
from node.client import _typed
from node.client._api import NodeApi, Route
from node.client._blocks import Blocks, new_upload_id, put_blocks, stage_dir_chunk
from protocols import accounts, champ, crypto, methods
from protocols.accounts import LoginData
from protocols.bats import hashed_id
from protocols.blocks import sign_put
from protocols.cid import CID
from protocols.crypto import BoxingKey, KdfParams, LoginKeys, SigningKey
from protocols.cryptree import Capability, KeyBlock, Properties
from protocols.errors import AuthFailed, Corrupted, Denied, MalformedInput, Unavailable
from protocols.names import check_password, check_username
from protocols.pki import CLAIM_LIFETIME, Claim, next_expiry
from protocols.pointers import CONTEXT as POINTER_CONTEXT
from protocols.pointers import PointerUpdate
from protocols.writerdata import WriterData

RENEW_BEFORE: Final = 30 * 24 * 3600  # seconds before its expiry that a login renews a claim
# The client's own opt-in to the small Argon2id profile (DESIGN §2). Whatever a node says, a
# client without it derives and accepts only production-strength parameters: a node that
# offered weak ones would get a login signature it could crack thousands of times faster.
TEST_KDF_ENV: Final = "PYRGOS_INSECURE_TEST_KDF"


def test_kdf_allowed() -> bool:
    """Whether this client was told (PYRGOS_INSECURE_TEST_KDF=1) to accept the small profile."""
    return os.environ.get(TEST_KDF_ENV) == "1"


@dataclass
class Session:
    """A logged-in user: the secrets their password unlocked, the node they talk to, and the
    node session (token, expiry in seconds) that their writes need. It keeps no
    password-derived key: only the password proves the password (DESIGN §7)."""

    api: NodeApi
    username: str
    data: LoginData
    token: bytes
    expiry: int
    weak_kdf: bool = False  # derived with the small test profile: the password is easy to crack
    home_node: bytes | None = None  # the node id of the user's home, from the PKI claim

    @property
    def route(self) -> Route:
        """How this user's own data is reached: their identity, homed on their home node."""
        return Route(self.owner, self.home_node)

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
    return await threads.run_sync(crypto.derive_login_keys, username, password, params)


async def _node_allows_test_kdf(api: NodeApi) -> bool:
    return (await _typed.request(api, methods.NodeInfo(), methods.NodeInfoReply)).test_mode


async def signup(
    api: NodeApi,
    username: str,
    password: str,
    *,
    test_kdf: bool | None = None,
    token: str | None = None,
) -> Session:
    """Create an account homed on the node behind `api` and return its session; `token` is
    the node's signup token, when it needs one.

    The small KDF profile is used only when the client opts in (`test_kdf`, by default
    PYRGOS_INSECURE_TEST_KDF) and the node is in test mode; the session says so (`weak_kdf`).
    """
    check_username(username)
    check_password(username, password)
    node_id = (await api.node_id()).decode()
    allowed = test_kdf_allowed() if test_kdf is None else test_kdf
    weak = allowed and await _node_allows_test_kdf(api)
    params = KdfParams.test_profile() if weak else KdfParams.production()
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
    stamp = api.now_ms()
    props = Properties(name=username, is_dir=True, size=0, modified=stamp, created=stamp)
    blocks = Blocks(api, Route(owner))
    tree = await stage_dir_chunk(
        blocks, champ.EMPTY_ROOT, home, 0, KeyBlock(crypto.random_key()), props, [], None,
        hashed_id(mirror_bat),
    )  # fmt: skip
    writer_data = WriterData(controller=owner, tree=tree, login=params, boxing=boxing.public)
    root = await blocks.put(writer_data.encode())
    staged = [(cid, blocks.staged[cid]) for cid in blocks.reachable_staged(root)]
    data = LoginData(identity=identity, boxing=boxing, home=home, mirror_bat=mirror_bat)
    claim = Claim.create(identity, username, node_id, int(api.clock()) + CLAIM_LIFETIME)
    call = methods.AccountSignup(
        claim,
        login.signing.public,
        data.seal(login.root_key, username),
        mirror_bat,
        PointerUpdate.create(identity, None, root, 1),
        tuple((cid.codec, block) for cid, block in staged),
        tuple(sign_put(identity, cid) for cid, _ in staged),
        token,
    )
    await _typed.request(api, call, methods.Done)
    # The node session comes from a login like any other (one round trip, no second KDF).
    _, session, expiry = await _open_node_session(api, username, login)
    api.session = session
    return Session(api, username, data, session, expiry, weak, node_id.encode())


async def login_keys(
    api: NodeApi, username: str, password: str, *, test_kdf: bool | None = None
) -> LoginKeys:
    """Fetch the user's public KDF parameters and derive their login keys. Parameters below
    production strength are refused unless this client opted in (`test_kdf`, by default
    PYRGOS_INSECURE_TEST_KDF): never on the node's word."""
    return (await _login_keys(api, username, password, test_kdf))[0]


async def _login_keys(
    api: NodeApi, username: str, password: str, test_kdf: bool | None
) -> tuple[LoginKeys, KdfParams]:
    check_username(username)
    call = methods.AccountParams(username)
    params = (await _typed.request(api, call, methods.AccountParamsReply)).params
    allowed = test_kdf_allowed() if test_kdf is None else test_kdf
    if not params.is_production_strength and not allowed:
        raise Denied(
            "the node offers password-KDF parameters below production strength "
            f"(Argon2id t={crypto.KDF_PRODUCTION_OPSLIMIT}, "
            f"m={crypto.KDF_PRODUCTION_MEMLIMIT // 2**20} MiB), which would let it guess the "
            f"password quickly: refused (for test accounts only, set {TEST_KDF_ENV}=1)"
        )
    return await _derive(username, password, params), params


async def resume(api: NodeApi, username: str, login: LoginKeys) -> Session:
    """Open a session from derived login keys: one round trip for the login, no KDF."""
    sealed, token, expiry = await _open_node_session(api, username, login)
    data = LoginData.open(login.root_key, username, sealed)
    return await reopen(api, username, data, token, expiry, check=False)  # it is new


async def _open_node_session(
    api: NodeApi, username: str, login: LoginKeys
) -> tuple[bytes, bytes, int]:
    """Prove the password to the home node: (sealed login data, session token, expiry)."""
    signed = api.now_ms()
    sig = accounts.sign_timed(login.signing, accounts.LOGIN, [username], signed)
    call = methods.AccountLogin(username, signed, sig)
    reply = await _typed.request(api, call, methods.AccountLoginReply)
    return reply.data, reply.session, reply.expiry


async def reopen(
    api: NodeApi, username: str, data: LoginData, token: bytes, expiry: int, *, check: bool = True
) -> Session:
    """A session from what a device saved at login: checks that the node still holds it (a
    device logged out elsewhere learns it here), checks the PKI, routes, renews the claim."""
    api.session = token
    try:
        if check:
            call = methods.SessionCheck(data.home.owner)
            await _typed.request(api, call, methods.SessionReply)
    except Denied as exc:
        raise AuthFailed(
            f"this device's session for {username} has ended (logged out, password changed"
            f" or expired): run `pyrgos login {username}`"
        ) from exc
    lookup = methods.PkiLookup(username)
    claim = (await _typed.request(api, lookup, methods.PkiLookupReply)).claim
    if claim.identity != data.home.owner:
        raise Corrupted("the PKI names another identity for this user than their login data")
    if claim.expiry - int(api.clock()) < RENEW_BEFORE:
        await renew_claim(api, data.identity, claim)
    return Session(api, username, data, token, expiry, home_node=claim.home.encode())


async def logout(session: Session, *, everywhere: bool = False) -> bool:
    """End this session at the home node (or, `everywhere`, every session of the user)."""
    call = methods.SessionEnd(session.owner, all=everywhere)
    ended = await _typed.request(session.api, call, methods.Done)
    session.api.session = None
    return ended.done


async def renew_claim(api: NodeApi, identity: SigningKey, claim: Claim) -> Claim:
    """Extend `claim` (same key, home and mirrors) by a year through the PKI node. A name
    whose claim runs out can be taken by someone else, so every login within RENEW_BEFORE of
    the expiry renews it; a PKI node that cannot be reached is tried again at the next."""
    renewed = Claim.create(
        identity,
        claim.username,
        claim.home,
        next_expiry(claim, int(api.clock())),
        mirrors=claim.mirrors,
    )
    try:
        await _typed.request(api, methods.PkiSubmit(renewed), methods.PkiSubmitReply)
    except Unavailable:
        return claim
    return renewed


async def login(
    api: NodeApi, username: str, password: str, *, test_kdf: bool | None = None
) -> Session:
    """Log in from any device: nothing is needed but the username and the password."""
    keys, params = await _login_keys(api, username, password, test_kdf)
    session = await resume(api, username, keys)
    session.weak_kdf = not params.is_production_strength
    return session


async def change_password(session: Session, current: str, new: str) -> Session:
    """Re-seal the login data under keys from `new` and a fresh salt; identity is unchanged.

    The home node checks the current password (the request is signed by the login key it
    derives) and ends every session of the user but the new one it returns.
    """
    check_password(session.username, new)
    api, username = session.api, session.username
    old_keys = await login_keys(api, username, current)
    try:  # checked before anything is written; the node checks again at the update
        await _open_node_session(api, username, old_keys)
    except AuthFailed as exc:
        raise AuthFailed(f"the current password is not accepted: {exc.message}") from exc
    get = methods.PointerGet(session.owner, session.owner)
    pointer_raw = (await _typed.request(api, get, methods.PointerGetReply)).update
    if pointer_raw is None:
        raise Corrupted("the account has no root pointer")
    pointer = PointerUpdate.decode(pointer_raw)
    session.identity.public.verify(pointer.signed_part, pointer.signature, POINTER_CONTEXT)
    blocks = Blocks(api, session.route)
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
    signed = api.now_ms()
    payload: list[object] = [username, new_keys.signing.public.to_cbor(), login_data, update]
    sig = accounts.sign_timed(old_keys.signing, accounts.UPDATE_LOGIN, payload, signed)
    call = methods.AccountUpdate(
        username, new_keys.signing.public, login_data, update, signed, sig, (upload,)
    )
    reply = await _typed.request(api, call, methods.SessionReply)
    if reply.session is None:
        raise Corrupted("the node's answer to account.update carries no session")
    token, expiry = reply.session, reply.expiry
    api.session = token
    return Session(api, username, session.data, token, expiry, session.weak_kdf, session.home_node)
