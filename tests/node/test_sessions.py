"""Accounts as the node enforces them: the client's KDF floor, node sessions (logout and a
password change end them), proof of the current password, and the throttling of failed
logins (issue 7, items 3 and 10)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from node.client import (
    TEST_KDF_ENV,
    FileSystem,
    NodeApi,
    Profile,
    SavedSession,
    Session,
    _session,
    change_password,
    login,
    login_keys,
    logout,
    reopen,
    resume,
    signup,
)
from node.net import serve_api
from node.server import NodeService, NodeSettings, PkiLog
from node.server._service import SOURCE_FREE_FAILURES
from node.store import Space, Store
from protocols import accounts, crypto
from protocols.cid import CID, CODEC_DAG_CBOR
from protocols.crypto import KdfParams, LoginKeys, SigningKey
from protocols.errors import AuthFailed, Denied, NotFound, RateLimited
from protocols.peerid import peer_id_of
from protocols.pointers import PointerUpdate
from simulations.swarm import LocalNetwork, new_node
from tests.node.conftest import PASSWORD, RunningNode

TIMEOUT = 30
NEW_PASSWORD = "a brand new passphrase"


class Clock:
    """A clock the test moves: seconds since the epoch, starting now."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def clocked_node(tmp_path: Path, nursery: trio.Nursery, clock: Clock) -> RunningNode:
    """A test-mode node whose sessions and login throttle run on `clock`."""
    store = Store(tmp_path / "clocked-db")
    key = SigningKey.generate()
    node_id = peer_id_of(key.public)
    service = NodeService(
        store, NodeSettings(node_id=node_id, test_mode=True), pki=PkiLog(store, node_id, key),
        clock=clock,
    )  # fmt: skip
    url = await nursery.start(serve_api, service, "127.0.0.1", 0)
    return RunningNode(service, url, store)


@pytest.fixture
async def capi(clocked_node: RunningNode, clock: Clock) -> AsyncIterator[NodeApi]:
    async with NodeApi(clocked_node.url) as client:
        client.clock = clock  # read auths expire on the node's clock
        yield client


async def can_write(session: Session) -> bool:
    """Whether the node accepts a write (a new directory) in this session."""
    try:
        await FileSystem(session).mkdir(f"d{crypto.random_bytes(4).hex()}")
    except Denied:
        return False
    return True


def sessions_of(store: Store) -> int:
    return sum(1 for _ in store.keys(Space.SESSIONS))


# -- item 3: the client's KDF floor -------------------------------------------------------------


async def test_weak_kdf_parameters_are_refused_without_the_clients_own_opt_in(
    running_node: RunningNode, api: NodeApi, alice: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    # alice was made with the small profile on a test-mode node; a node (or a proxy) that
    # offers such parameters, and says it is in test mode, gets no login from a client that
    # did not opt in itself: nothing past the parameters reaches it.
    assert alice.weak_kdf
    monkeypatch.delenv(TEST_KDF_ENV)
    with trio.fail_after(TIMEOUT):
        info = await api.call("node.info")
        assert info["test_mode"] is True
        before = running_node.service.stats["calls"]
        with pytest.raises(Denied, match=f"below production strength.*{TEST_KDF_ENV}=1"):
            await login(api, "alice", PASSWORD)
        assert running_node.service.stats["calls"] == before + 1  # account.params only
        with pytest.raises(Denied, match="below production strength"):
            await login_keys(api, "alice", PASSWORD)
        # The explicit opt-in, and only it, lets the client through.
        assert (await login(api, "alice", PASSWORD, test_kdf=True)).weak_kdf


async def test_signup_on_a_test_mode_node_is_production_strength_without_the_opt_in(
    api: NodeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TEST_KDF_ENV)
    used: list[KdfParams] = []

    async def cheap_derive(username: str, password: str, params: KdfParams) -> LoginKeys:
        used.append(params)  # what the client chose; derived cheaply to keep the test fast
        return crypto.derive_login_keys(username, password, KdfParams.test_profile())

    monkeypatch.setattr(_session, "_derive", cheap_derive)
    with trio.fail_after(TIMEOUT):
        session = await signup(api, "bob", PASSWORD)
        published = KdfParams.from_cbor(
            (await api.call("account.params", {"username": "bob"}))["params"]
        )
    assert not session.weak_kdf
    assert [p.is_production_strength for p in used] == [True]
    assert published.is_production_strength


# -- item 10 (a): only the password changes the password ---------------------------------------


async def test_the_session_file_holds_no_password_derived_secret(
    api: NodeApi, alice: Session, tmp_path: Path
) -> None:
    profile = Profile(tmp_path / "profile")
    profile.save(SavedSession(api.url, "alice", alice.data, alice.token, alice.expiry))
    with trio.fail_after(TIMEOUT):
        keys = await login_keys(api, "alice", PASSWORD)
    saved = profile.session_file.read_bytes()
    assert keys.signing.seed not in saved
    assert keys.root_key not in saved
    assert profile.load().data == alice.data


async def test_the_session_file_is_never_written_through_a_planted_link(
    api: NodeApi, alice: Session, tmp_path: Path
) -> None:
    profile = Profile(tmp_path / "profile")
    profile.path.mkdir()
    outside = tmp_path / "outside"
    outside.write_bytes(b"")
    for planted in ("session.tmp", ".session.tmp"):  # where a predictable temporary name was
        (profile.path / planted).symlink_to(outside)
    profile.save(SavedSession(api.url, "alice", alice.data, alice.token, alice.expiry))
    assert outside.read_bytes() == b""
    assert profile.load().token == alice.token
    assert (profile.session_file.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in profile.path.iterdir()) == [
        ".session.tmp",
        "session.cbor",
        "session.tmp",
    ]


async def test_account_update_needs_the_current_login_key_not_the_identity(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    # Everything a device's session holds (identity key, token) does not make a password
    # change: the node wants a signature by the key only the current password derives.
    new_key = SigningKey.generate().public.to_cbor()
    target = CID.of(CODEC_DAG_CBOR, b"\xa0")
    pointer = PointerUpdate.create(alice.identity, None, target, 2).encode()
    signed = int(time.time() * 1000)
    for signer in (alice.identity, SigningKey.generate()):
        payload: list[object] = ["alice", new_key, b"sealed", pointer]
        before = dict(running_node.store.items(Space.ACCOUNTS))
        with trio.fail_after(TIMEOUT), pytest.raises(AuthFailed, match="wrong password"):
            await api.call(
                "account.update",
                {
                    "username": "alice",
                    "login_key": new_key,
                    "login_data": b"sealed",
                    "pointer": pointer,
                    "time": signed,
                    "sig": accounts.sign_timed(signer, accounts.UPDATE_LOGIN, payload, signed),
                },
            )
        assert dict(running_node.store.items(Space.ACCOUNTS)) == before


# -- item 10 (b): node sessions -----------------------------------------------------------------


async def test_writes_need_a_live_session_of_their_owner(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    with trio.fail_after(TIMEOUT):
        async with NodeApi(running_node.url) as other:
            bob = await signup(other, "bob", PASSWORD)
        assert await can_write(alice)
        for token in (None, bob.token, crypto.random_bytes(accounts.SESSION_TOKEN_BYTES)):
            api.session = token  # none, another user's, a made-up one
            assert not await can_write(alice)
            with pytest.raises(Denied, match="session"):
                await FileSystem(alice).usage()
        api.session = alice.token
        assert await can_write(alice)


async def test_logout_ends_this_session_only(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    with trio.fail_after(TIMEOUT):
        async with NodeApi(running_node.url) as other:
            second = await login(other, "alice", PASSWORD)
            token = alice.token
            assert await logout(alice)
            api.session = token  # a copy of the logged-out session file
            assert not await can_write(alice)
            with pytest.raises(AuthFailed, match="`pyrgos login alice`"):
                await reopen(api, "alice", alice.data, token, alice.expiry)
            assert await can_write(second)  # another device is not affected
            api.session = token
            assert not await logout(alice)  # already ended


async def test_logout_everywhere_and_a_password_change_end_every_other_session(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    with trio.fail_after(TIMEOUT):
        async with NodeApi(running_node.url) as api_b, NodeApi(running_node.url) as api_c:
            device_b = await login(api_b, "alice", PASSWORD)
            changed = await change_password(alice, PASSWORD, NEW_PASSWORD)
            assert await can_write(changed)  # the device that changed it stays logged in
            assert not await can_write(device_b)
            with pytest.raises(AuthFailed, match="has ended"):
                await reopen(api_b, "alice", device_b.data, device_b.token, device_b.expiry)
            device_c = await login(api_c, "alice", NEW_PASSWORD)
            assert await logout(device_c, everywhere=True)
            assert not await can_write(changed)
    assert sessions_of(running_node.store) == 0


async def test_sessions_expire_and_are_bounded_per_user(
    clocked_node: RunningNode, capi: NodeApi, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(TIMEOUT):
        alice = await signup(capi, "alice", PASSWORD)
        keys = await login_keys(capi, "alice", PASSWORD)
        clock.now += accounts.SESSION_LIFETIME - 1
        assert await can_write(alice)
        clock.now += 1
        assert not await can_write(alice)
        async with NodeApi(clocked_node.url) as api:
            api.clock = clock
            first = await resume(api, "alice", keys)
            for _ in range(accounts.MAX_SESSIONS):
                clock.now += 1
                latest = await resume(api, "alice", keys)
            assert sessions_of(clocked_node.store) == accounts.MAX_SESSIONS  # expired one gone
            assert await can_write(latest)
            api.session = first.token
            assert not await can_write(first)  # the oldest made room


# -- item 10 (c): failed logins are throttled --------------------------------------------------


async def test_failed_logins_per_username_back_off_and_a_correct_login_after_the_wait_works(
    capi: NodeApi, clock: Clock
) -> None:
    with trio.fail_after(TIMEOUT):
        await signup(capi, "alice", PASSWORD)
        right = await login_keys(capi, "alice", PASSWORD)
        wrong = await login_keys(capi, "alice", "not the password at all")
        for _ in range(accounts.FREE_FAILURES):
            with pytest.raises(AuthFailed, match="wrong password"):
                await resume(capi, "alice", wrong)
        waits = []
        for _ in range(3):
            # Locked: even the right password is refused, so a locked guess teaches nothing.
            with pytest.raises(RateLimited, match=r"for this user: try again in \d+ seconds") as e:
                await resume(capi, "alice", right)
            waits.append(int(e.value.message.split("try again in ")[1].split()[0]))
            clock.now += waits[-1]
            with pytest.raises(AuthFailed):
                await resume(capi, "alice", wrong)
        assert waits == [1, 2, 4]  # doubling
        clock.now += 8
        assert (await resume(capi, "alice", right)).username == "alice"
        # Success resets the username's count: the free failures are free again.
        with pytest.raises(AuthFailed):
            await resume(capi, "alice", wrong)
        assert (await resume(capi, "alice", right)).username == "alice"


async def test_failed_logins_per_source_are_throttled_across_usernames(
    clocked_node: RunningNode, capi: NodeApi, clock: Clock
) -> None:
    signed = int(clock.now * 1000)
    with trio.fail_after(TIMEOUT):
        await signup(capi, "alice", PASSWORD)
        for number in range(SOURCE_FREE_FAILURES):
            with pytest.raises(NotFound):  # probing names that do not exist
                await capi.call(
                    "account.login",
                    {"username": f"nobody{number}", "time": signed, "sig": bytes(64)},
                )
        with pytest.raises(RateLimited, match="from this address"):
            await login(capi, "alice", PASSWORD)
        clock.now += 1
        assert (await login(capi, "alice", PASSWORD)).username == "alice"


async def test_sessions_and_throttling_hold_through_a_node_that_is_not_home(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    # The token travels opaquely with forwarded calls: only the home checks and ends it, and
    # the home counts a user's failed logins whichever node they come through.
    swarm = LocalNetwork()
    home = new_node(Store(tmp_path / "home"))
    other = new_node(Store(tmp_path / "other"), pki_node=home.settings.node_id)
    urls = {}
    for service in (home, other):
        swarm.add(service)
        urls[service] = await nursery.start(serve_api, service, "127.0.0.1", 0)
    with trio.fail_after(TIMEOUT):
        async with NodeApi(urls[home]) as api:
            await signup(api, "alice", PASSWORD)
        async with NodeApi(urls[other]) as api, NodeApi(urls[other]) as api_b:
            device_a = await login(api, "alice", PASSWORD)
            device_b = await login(api_b, "alice", PASSWORD)
            assert await can_write(device_a)
            assert await can_write(device_b)
            assert await logout(device_a, everywhere=True)
            assert not await can_write(device_b)
            assert not list(other.store.keys(Space.SESSIONS))  # the home alone keeps them
            wrong = await login_keys(api, "alice", "not the password at all")
            for _ in range(accounts.FREE_FAILURES):
                with pytest.raises(AuthFailed):
                    await resume(api, "alice", wrong)
        async with NodeApi(urls[home]) as api:
            with pytest.raises(RateLimited, match="for this user"):
                await login(api, "alice", PASSWORD)
    assert other.stats["forwarded"] > 0
    assert home.stats["logins_throttled"] == 1
