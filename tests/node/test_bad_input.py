"""Bad input, end to end: every refusal is a clear typed error, and the node is left exactly as
it was (its whole store, compared space by space, or the user's pointer and usage).

Network calls run under `trio.fail_after(TIMEOUT)`; raw HTTP goes through httpx so the wire
form of errors ({"error", "message"} in CBOR, 4xx) is checked too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from node.client import FileSystem, NodeApi, Session, change_password, login, login_keys, signup
from node.client import _session as client_session
from node.net import API_PREFIX, MAX_BODY_BYTES, serve_api
from node.server import METHODS, NodeService
from node.server._service import StoreBlocks
from node.store import Space, Store
from protocols import accounts, bats, cbor, champ
from protocols.blocks import sign_put
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW
from protocols.crypto import SigningKey
from protocols.errors import (
    ERRORS_BY_CODE,
    AuthFailed,
    Conflict,
    Corrupted,
    Denied,
    InvalidName,
    InvalidSignature,
    MalformedInput,
    NotFound,
    PyrgosError,
    QuotaExceeded,
    StaleRoot,
    TooLarge,
    WeakPassword,
)
from protocols.pointers import PointerUpdate
from protocols.writerdata import WriterData
from simulations.swarm import new_node
from tests.node.conftest import PASSWORD, RunningNode

TIMEOUT = 30
CBOR_TYPE = "application/cbor"
MiB = 1024 * 1024

Snapshot = dict[Space, dict[bytes, bytes]]
STRANGER = SigningKey.generate().public.key_hash()


# -- helpers ----------------------------------------------------------------------------------


def snapshot(store: Store) -> Snapshot:
    return {space: dict(store.items(space)) for space in Space}


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    """Readable differences between two snapshots (the values may be megabytes)."""
    out = []
    for space in Space:
        old, new = before[space], after[space]
        for key in sorted(old.keys() | new.keys()):
            if old.get(key) != new.get(key):
                out.append(f"{space.name} {key.hex()[:40]}")
    return out


@contextlib.contextmanager
def unchanged(store: Store, *spaces: Space) -> Iterator[None]:
    """Assert the body leaves `spaces` (default: every space) of the store as they were."""
    watched = spaces or tuple(Space)
    before = snapshot(store)
    yield
    after = snapshot(store)
    diff = [line for line in changes(before, after) if line.split()[0] in {s.name for s in watched}]
    assert not diff, f"a refused input changed the store: {diff}"


@contextlib.contextmanager
def no_calls(node: RunningNode) -> Iterator[None]:
    """Assert nothing reached the node's method table during the body."""
    before = node.service.stats["calls"]
    yield
    assert node.service.stats["calls"] == before, "a call reached the node"


def owner_hash() -> CID:
    return SigningKey.generate().public.key_hash()


async def start_node(nursery: trio.Nursery, store: Store, **settings: Any) -> RunningNode:
    service = new_node(store, **settings)
    url = await nursery.start(serve_api, service, "127.0.0.1", 0)
    return RunningNode(service, url, store)


def wire_error(response: httpx.Response, status: int, code: str) -> str:
    """Check an HTTP error reply is the API's CBOR error form; return its message."""
    assert response.status_code == status, response.content[:200]
    assert 400 <= status < 600
    assert response.headers["content-type"] == CBOR_TYPE
    body = cbor.decode(response.content)
    assert isinstance(body, dict)
    assert set(body) == {"error", "message"}
    assert body["error"] == code
    assert code in ERRORS_BY_CODE
    message = body["message"]
    assert isinstance(message, str)
    assert len(message) >= 8
    assert "Traceback" not in message
    assert 'File "' not in message
    return message


async def post_raw(http: httpx.AsyncClient, method: str, body: bytes) -> httpx.Response:
    return await http.post(
        f"{API_PREFIX}/call/{method}", content=body, headers={"content-type": CBOR_TYPE}
    )


async def get_block_raw(
    http: httpx.AsyncClient, cid: CID | str, auth: str | None
) -> httpx.Response:
    text = cid if isinstance(cid, str) else cid.text
    params = {} if auth is None else {"auth": auth}
    return await http.get(f"{API_PREFIX}/block/{text}", params=params)


async def root_of(api: NodeApi, session: Session) -> tuple[PointerUpdate, WriterData]:
    pointer = PointerUpdate.decode(await api.call("pointer.get", {"writer": session.owner}))
    return pointer, WriterData.decode(await api.get_block(pointer.new))


def structured(n: int) -> bytes:
    """A distinct structured block a node accepts at put (a one-entry CHAMP node)."""
    entry = [bytes([n]) * 32, champ.EMPTY_ROOT]
    return cbor.encode([(1 << 31).to_bytes(4, "big"), bytes(4), [[entry]], []])


def variant(writer_data: WriterData, n: int) -> bytes:
    """A distinct WriterData of the same writer (same tree and login parameters)."""
    return replace(writer_data, links=CID.of(CODEC_DAG_CBOR, cbor.encode(n))).encode()


async def put(
    api: NodeApi,
    owner: CID,
    blocks: list[bytes],
    signer: SigningKey,
    *,
    writer: CID | None = None,
    codec: int = CODEC_DAG_CBOR,
) -> list[CID]:
    cids = [CID.of(codec, data) for data in blocks]
    result: list[CID] = await api.call(
        "block.put",
        {
            "owner": owner,
            "writer": writer or signer.public.key_hash(),
            "blocks": [[codec, data] for data in blocks],
            "sigs": [sign_put(signer, cid) for cid in cids],
        },
    )
    return result


async def cas(api: NodeApi, session: Session, update: PointerUpdate, **extra: Any) -> Any:
    return await api.call(
        "pointer.cas",
        {"owner": session.owner, "updates": [[session.owner, update.encode()]], **extra},
    )


async def home_node(node: RunningNode, session: Session) -> CID:
    """The CID of the user's home directory node: a private block (it names BATs)."""
    pointer = PointerUpdate.decode(node.store.get(Space.POINTERS, session.owner.raw) or b"")
    tree = WriterData.decode(node.store.get_block(pointer.new.raw) or b"").tree
    cid = await champ.get(StoreBlocks(node.store), tree, session.home.label)
    assert cid is not None
    return cid


async def read_into(fs: FileSystem, path: str, pieces: list[bytes]) -> None:
    """Read a file, keeping each piece as it arrives (so a failed read shows what leaked)."""
    async with fs.read(path) as channel:
        async for piece in channel:
            pieces.append(piece)


@pytest.fixture
async def http(running_node: RunningNode) -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client of the running node, for requests NodeApi would never send."""
    async with httpx.AsyncClient(base_url=running_node.url, verify=False) as client:  # plain HTTP
        yield client


@pytest.fixture
async def small_quota_node(tmp_path: Path, nursery: trio.Nursery) -> RunningNode:
    return await start_node(
        nursery, Store(tmp_path / "quota-db"), test_mode=True, default_quota=64 * 1024
    )


# -- accounts ---------------------------------------------------------------------------------


async def test_wrong_password_is_auth_failed(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    with trio.fail_after(TIMEOUT), unchanged(running_node.store):
        with pytest.raises(AuthFailed, match="wrong password"):
            await login(api, "alice", "incorrect horse battery")
        with pytest.raises(AuthFailed, match="wrong password"):
            await login(api, "alice", PASSWORD.upper())


async def test_unknown_user_is_not_found(running_node: RunningNode, api: NodeApi) -> None:
    with trio.fail_after(TIMEOUT), unchanged(running_node.store):
        with pytest.raises(NotFound, match="unknown user 'nobody'"):
            await login(api, "nobody", PASSWORD)
        with pytest.raises(NotFound, match="unknown user"):
            await api.call("pki.lookup", {"username": "nobody"})
        with pytest.raises(NotFound, match="unknown user"):
            await api.call("account.login", {"username": "nobody", "time": 0, "sig": bytes(64)})


async def test_taken_username_is_conflict(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    with (
        trio.fail_after(TIMEOUT),
        unchanged(running_node.store),
        pytest.raises(Conflict, match="'alice' is taken"),
    ):
        await signup(api, "alice", "another fine passphrase")
    with trio.fail_after(TIMEOUT):
        assert (await login(api, "alice", PASSWORD)).owner == alice.owner


WEAK_PASSWORDS = [
    ("bob", "short", "at least 10 characters"),
    ("bob", "", "at least 10 characters"),
    ("bob", "x" * 1025, "at most 1024 bytes"),
    ("alicealice1", "alicealice1", "must not be the username"),
    ("alicealice1", "ALICEAlice1", "must not be the username"),
    ("carol", "my-carol-password", "must not contain the username"),
    ("carol", "1234CAROL5678", "must not contain the username"),
]
BAD_USERNAMES = [
    ("Bob", "a-z"),
    ("-bob", "a-z"),
    ("bo--b", "a-z"),
    ("b" * 33, "1-32"),
    ("bob\x00", "a-z"),
    ("admin", "reserved"),
]


async def test_weak_password_is_refused_before_sending(
    running_node: RunningNode, api: NodeApi
) -> None:
    with trio.fail_after(TIMEOUT), no_calls(running_node), unchanged(running_node.store):
        for username, password, match in WEAK_PASSWORDS:
            with pytest.raises(WeakPassword, match=match):
                await signup(api, username, password)


async def test_invalid_username_is_refused_before_sending(
    running_node: RunningNode, api: NodeApi
) -> None:
    with trio.fail_after(TIMEOUT), no_calls(running_node), unchanged(running_node.store):
        for username, match in BAD_USERNAMES:
            with pytest.raises(InvalidName, match=match):
                await signup(api, username, PASSWORD)
            with pytest.raises(InvalidName, match=match):
                await login(api, username, PASSWORD)


async def test_weak_new_password_is_refused_before_sending(
    running_node: RunningNode, alice: Session
) -> None:
    with trio.fail_after(TIMEOUT), no_calls(running_node), unchanged(running_node.store):
        with pytest.raises(WeakPassword, match="must not contain the username"):
            await change_password(alice, PASSWORD, "alice-in-wonderland")
        with pytest.raises(WeakPassword, match="at least 10"):
            await change_password(alice, PASSWORD, "tiny")


async def test_change_password_with_wrong_current_password(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    with (
        trio.fail_after(TIMEOUT),
        unchanged(running_node.store),
        pytest.raises(AuthFailed, match="current password is not accepted: wrong password"),
    ):
        await change_password(alice, "not the password at all", "a brand new passphrase")
    with trio.fail_after(TIMEOUT):
        assert (await login(api, "alice", PASSWORD)).owner == alice.owner


@pytest.mark.parametrize("offset_ms", [-10 * 60 * 1000, 10 * 60 * 1000])
async def test_signed_time_ten_minutes_off_is_auth_failed(
    running_node: RunningNode,
    api: NodeApi,
    http: httpx.AsyncClient,
    alice: Session,
    offset_ms: int,
) -> None:
    signed = int(time.time() * 1000) + offset_ms
    keys = await login_keys(api, "alice", PASSWORD)
    login_sig = accounts.sign_timed(keys.signing, accounts.LOGIN, ["alice"], signed)
    usage_sig = accounts.sign_timed(alice.identity, accounts.USAGE, [alice.owner], signed)
    with trio.fail_after(TIMEOUT), unchanged(running_node.store):
        with pytest.raises(AuthFailed, match="5 minutes off"):
            await api.call("account.login", {"username": "alice", "time": signed, "sig": login_sig})
        with pytest.raises(AuthFailed, match="5 minutes off"):
            await api.call("usage.get", {"owner": alice.owner, "time": signed, "sig": usage_sig})
        response = await post_raw(
            http,
            "account.login",
            cbor.encode({"username": "alice", "time": signed, "sig": login_sig}),
        )
        assert "clock" in wire_error(response, 401, "auth-failed")


async def test_login_signed_by_another_key_is_auth_failed(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    signed = int(time.time() * 1000)
    forged = accounts.sign_timed(alice.identity, accounts.LOGIN, ["alice"], signed)  # not login
    with (
        trio.fail_after(TIMEOUT),
        unchanged(running_node.store),
        pytest.raises(AuthFailed, match="wrong password"),
    ):
        await api.call("account.login", {"username": "alice", "time": signed, "sig": forged})


async def test_node_not_in_test_mode_refuses_the_small_kdf_profile(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = await start_node(nursery, Store(tmp_path / "prod-db"), test_mode=False)
    empty = snapshot(node.store)  # a new node holds only its empty PKI log

    async def claims_test_mode(api: NodeApi) -> bool:
        return True  # a client that (wrongly) offers the small profile to a production node

    monkeypatch.setattr(client_session, "_node_allows_test_kdf", claims_test_mode)
    with trio.fail_after(TIMEOUT):
        async with NodeApi(node.url) as api:
            with pytest.raises(Denied, match="small KDF profile"):
                await signup(api, "dave", PASSWORD)
    assert node.service.stats["calls"] > 0  # the refusal came from the node
    assert snapshot(node.store) == empty, "nothing is stored"
    assert node.service.pki is not None
    assert node.service.pki.lookup("dave") is None


async def test_production_node_refuses_a_small_kdf_password_change(
    running_node: RunningNode,
    alice: Session,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same store served by a node that is not in test mode.
    same = running_node.service
    service = NodeService(
        same.store, dataclasses.replace(same.settings, test_mode=False), pki=same.pki
    )
    prod = RunningNode(service, await nursery.start(serve_api, service, "127.0.0.1", 0), same.store)
    with trio.fail_after(TIMEOUT):
        async with NodeApi(prod.url) as api:
            with unchanged(prod.store), pytest.raises(Denied, match="below production"):
                await login(api, "alice", PASSWORD, test_kdf=False)  # the client itself refuses

            async def claims_test_mode(api: NodeApi) -> bool:
                return True

            monkeypatch.setattr(client_session, "_node_allows_test_kdf", claims_test_mode)
            session = replace(alice, api=api)
            api.session = alice.token
            watched = (Space.POINTERS, Space.ACCOUNTS, Space.PKI, Space.WRITERS)
            with unchanged(prod.store, *watched), pytest.raises(Denied, match="small KDF"):
                await change_password(session, PASSWORD, "a brand new passphrase")
        async with NodeApi(running_node.url) as api:
            assert (await login(api, "alice", PASSWORD)).owner == alice.owner


# -- block writes -----------------------------------------------------------------------------


async def test_block_put_signed_by_a_foreign_key(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    block = structured(1)
    with trio.fail_after(TIMEOUT), unchanged(running_node.store):
        with pytest.raises(InvalidSignature, match="not signed by the writer"):
            await put(api, alice.owner, [block], SigningKey.generate(), writer=alice.owner)
        # One good signature does not carry a bad one.
        cid = CID.of(CODEC_DAG_CBOR, block)
        other = structured(2)
        with pytest.raises(InvalidSignature):
            await api.call(
                "block.put",
                {
                    "owner": alice.owner,
                    "writer": alice.owner,
                    "blocks": [[CODEC_DAG_CBOR, block], [CODEC_DAG_CBOR, other]],
                    "sigs": [sign_put(alice.identity, cid), sign_put(alice.identity, cid)],
                },
            )


async def test_block_put_by_a_writer_not_homed_here(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    stranger = SigningKey.generate()
    block = structured(1)
    with trio.fail_after(TIMEOUT), unchanged(running_node.store):
        with pytest.raises(Denied, match="does not belong to a user homed on this node"):
            await put(api, alice.owner, [block], stranger)
        with pytest.raises(Denied, match="homed on this node"):
            await put(api, stranger.public.key_hash(), [block], stranger)
        # alice's writer, but claimed for another owner
        with pytest.raises(Denied, match="does not belong to that owner"):
            await put(api, owner_hash(), [block], alice.identity)


BAD_PUTS: list[tuple[str, type[PyrgosError], str]] = [
    ("too-many", TooLarge, "at most 64 blocks"),
    ("too-big", TooLarge, "at most"),
    ("codec", MalformedInput, "raw or dag-cbor"),
    ("non-canonical", MalformedInput, "canonical"),
    ("lengths", MalformedInput, "same length"),
    ("not-lists", MalformedInput, "same length"),
    ("item-shape", MalformedInput, "each block is"),
    ("upload", MalformedInput, "'upload' must be 16 bytes"),
    ("sig-type", MalformedInput, "signatures must be bytes"),
    ("writer-type", MalformedInput, "'writer'"),
]


def bad_put_args(session: Session, shape: str) -> dict[str, Any]:
    block = structured(1)
    blocks: Any = [[CODEC_DAG_CBOR, block]]
    extra: dict[str, Any] = {}
    if shape == "too-many":
        blocks = [[CODEC_RAW, bytes([i])] for i in range(65)]
    elif shape == "too-big":
        blocks = [[CODEC_RAW, bytes(MiB + 8 * 1024 + 1)]]
    elif shape == "codec":
        blocks = [[0x70, block]]
    elif shape == "non-canonical":
        blocks = [[CODEC_DAG_CBOR, b"\xa2\x61b\x01\x61a\x02"]]  # keys out of order
    elif shape == "item-shape":
        blocks = [[CODEC_DAG_CBOR, block, 1]]
    elif shape == "upload":
        extra["upload"] = b"short"
    elif shape == "writer-type":
        extra["writer"] = "alice"
    cids = [CID.of(CODEC_RAW if b[0] != CODEC_DAG_CBOR else CODEC_DAG_CBOR, b[1]) for b in blocks]
    sigs: Any = [sign_put(session.identity, cid) for cid in cids]
    if shape == "lengths":
        sigs.append(sigs[0])
    elif shape == "not-lists":
        blocks = {"a": 1}
    elif shape == "sig-type":
        sigs = ["not bytes"]
    return {
        "owner": session.owner,
        "writer": session.owner,
        "blocks": blocks,
        "sigs": sigs,
        **extra,
    }


async def test_malformed_block_puts(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    with trio.fail_after(TIMEOUT), unchanged(running_node.store):
        for shape, error, match in BAD_PUTS:
            with pytest.raises(error, match=match) as caught:
                await api.call("block.put", bad_put_args(alice, shape))
            assert caught.type is error, shape


# -- pointers ---------------------------------------------------------------------------------


async def test_replayed_pointer_update_is_conflict(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    with trio.fail_after(TIMEOUT):
        pointer, writer_data = await root_of(api, alice)
        (r1,) = await put(api, alice.owner, [variant(writer_data, 1)], alice.identity)
        update = PointerUpdate.create(alice.identity, pointer.new, r1, pointer.sequence + 1)
        assert await cas(api, alice, update) is True
        with unchanged(running_node.store), pytest.raises(Conflict):
            await cas(api, alice, update)  # the very same signed update, again
        # A replay of an older update to a root that is current again is still refused.
        back = PointerUpdate.create(alice.identity, r1, pointer.new, pointer.sequence + 2)
        assert await cas(api, alice, back) is True
        with unchanged(running_node.store), pytest.raises(Conflict, match="out of order"):
            await cas(api, alice, update)
        assert (await root_of(api, alice))[0] == back


async def test_out_of_order_pointer_updates_are_conflict(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    with trio.fail_after(TIMEOUT):
        pointer, writer_data = await root_of(api, alice)
        seq = pointer.sequence
        r1, r2, r3 = await put(
            api, alice.owner, [variant(writer_data, n) for n in (1, 2, 3)], alice.identity
        )
        u1 = PointerUpdate.create(alice.identity, pointer.new, r1, seq + 1)
        u2 = PointerUpdate.create(alice.identity, r1, r2, seq + 2)
        u3 = PointerUpdate.create(alice.identity, r2, r3, seq + 3)
        assert await cas(api, alice, u1)
        with unchanged(running_node.store), pytest.raises(Conflict):
            await cas(api, alice, u3)  # arrives before u2
        # The right previous value but a sequence that does not increase.
        for sequence in (seq + 1, seq, 1):
            stale = PointerUpdate.create(alice.identity, r1, r2, sequence)
            with unchanged(running_node.store), pytest.raises(Conflict, match="out of order") as e:
                await cas(api, alice, stale)
            assert e.type is Conflict
        assert await cas(api, alice, u2)
        assert await cas(api, alice, u3)
        assert (await root_of(api, alice))[0] == u3


async def test_cas_on_a_stale_root_is_stale_root(
    running_node: RunningNode, api: NodeApi, http: httpx.AsyncClient, alice: Session
) -> None:
    with trio.fail_after(TIMEOUT):
        pointer, writer_data = await root_of(api, alice)
        r1, r2 = await put(
            api, alice.owner, [variant(writer_data, n) for n in (1, 2)], alice.identity
        )
        assert await cas(
            api, alice, PointerUpdate.create(alice.identity, pointer.new, r1, pointer.sequence + 1)
        )
        # A second writer that read the old root and raced the first.
        late = PointerUpdate.create(alice.identity, pointer.new, r2, pointer.sequence + 2)
        with unchanged(running_node.store), pytest.raises(StaleRoot, match="stale root"):
            await cas(api, alice, late)
        first = PointerUpdate.create(alice.identity, None, r2, pointer.sequence + 2)
        with unchanged(running_node.store), pytest.raises(StaleRoot):
            await cas(api, alice, first)  # "first write" to a pointer that exists
        response = await post_raw(
            http,
            "pointer.cas",
            cbor.encode(
                {
                    "owner": alice.owner,
                    "updates": [[alice.owner, late.encode()]],
                    "session": alice.token,
                }
            ),
        )
        wire_error(response, 409, "stale-root")


async def test_pointer_to_a_block_that_is_not_writer_data(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    with trio.fail_after(TIMEOUT):
        pointer, writer_data = await root_of(api, alice)
        (not_wd,) = await put(api, alice.owner, [structured(3)], alice.identity)
        missing = CID.of(CODEC_DAG_CBOR, variant(writer_data, 99))  # never stored
        for target in (not_wd, writer_data.tree, missing):
            update = PointerUpdate.create(alice.identity, pointer.new, target, pointer.sequence + 1)
            with (
                unchanged(running_node.store),
                pytest.raises(Conflict, match="not a stored WriterData block"),
            ):
                await cas(api, alice, update)


async def test_pointer_to_writer_data_of_another_controller(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    with trio.fail_after(TIMEOUT):
        pointer, writer_data = await root_of(api, alice)
        foreign = replace(writer_data, controller=owner_hash()).encode()
        (target,) = await put(api, alice.owner, [foreign], alice.identity)
        update = PointerUpdate.create(alice.identity, pointer.new, target, pointer.sequence + 1)
        with unchanged(running_node.store), pytest.raises(Conflict, match="controller"):
            await cas(api, alice, update)


async def test_pointer_updates_from_the_wrong_key_or_owner(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    stranger = SigningKey.generate()
    with trio.fail_after(TIMEOUT):
        pointer, writer_data = await root_of(api, alice)
        (r1,) = await put(api, alice.owner, [variant(writer_data, 1)], alice.identity)
        forged = PointerUpdate.create(stranger, pointer.new, r1, pointer.sequence + 1)
        with unchanged(running_node.store), pytest.raises(InvalidSignature):
            await cas(api, alice, forged)
        honest = PointerUpdate.create(alice.identity, pointer.new, r1, pointer.sequence + 1)
        with unchanged(running_node.store), pytest.raises(Denied, match="does not belong"):
            await api.call(
                "pointer.cas", {"owner": owner_hash(), "updates": [[alice.owner, honest.encode()]]}
            )
        own = PointerUpdate.create(stranger, None, r1, 1)
        with unchanged(running_node.store), pytest.raises(Denied, match="homed on this node"):
            await api.call(
                "pointer.cas",
                {"owner": alice.owner, "updates": [[stranger.public.key_hash(), own.encode()]]},
            )
        # A valid update in a call that is malformed elsewhere changes nothing (one batch).
        with unchanged(running_node.store), pytest.raises(MalformedInput, match="uploads"):
            await cas(api, alice, honest, uploads="not a list")
        with unchanged(running_node.store), pytest.raises(MalformedInput, match="one update"):
            await api.call(
                "pointer.cas",
                {
                    "owner": alice.owner,
                    "updates": [[alice.owner, honest.encode()], [alice.owner, honest.encode()]],
                },
            )
        assert await cas(api, alice, honest)


# -- block reads ------------------------------------------------------------------------------


async def test_private_block_reads_need_a_valid_bat(
    running_node: RunningNode, api: NodeApi, http: httpx.AsyncClient, alice: Session
) -> None:
    cid = await home_node(running_node, alice)
    service = running_node.service
    node_id = service.node_id_bytes
    secret = alice.home.bat  # chunk 0's BAT is the capability's
    now = int(time.time())
    other_cid = CID.of(CODEC_DAG_CBOR, b"\xa0")
    # Without one of the block's BATs, a private block looks missing (see test_block_reads).
    refused: list[tuple[str, bats.ReadAuth | None, str]] = [
        ("no auth", None, "not stored here"),
        ("wrong BAT", bats.make_read_auth(bytes(32), cid, b"", node_id, now), "not stored here"),
        (
            "unknown mirror BAT",
            bats.make_read_auth(bytes(32), cid, b"", node_id, now, hashed=True),
            "unknown mirror BAT",
        ),
        ("other block", bats.make_read_auth(secret, other_cid, b"", node_id, now), "not verify"),
        ("other node", bats.make_read_auth(secret, cid, b"", b"elsewhere", now), "not verify"),
        ("other peer", bats.make_read_auth(secret, cid, b"peer", node_id, now), "not verify"),
        ("expired", bats.make_read_auth(secret, cid, b"", node_id, now - 1000), "expired"),
        ("far future", bats.make_read_auth(secret, cid, b"", node_id, now + 3600), "too far"),
    ]
    good = bats.make_read_auth(secret, cid, b"", node_id, now)
    refused.append(("bad mac", replace(good, mac=bytes(32)), "not verify"))
    with trio.fail_after(TIMEOUT), unchanged(running_node.store):
        served = service.stats["blocks_served"]
        for what, auth, match in refused:
            kind = NotFound if match == "not stored here" else Denied
            with pytest.raises(kind, match=match):
                await service.get_block(cid, auth, b"")
            response = await get_block_raw(http, cid, None if auth is None else auth.to_text())
            assert response.content != running_node.store.get_block(cid.raw), what
            wire_error(response, kind.http_status, kind.code)
            args: dict[str, Any] = {"cid": cid}
            if auth is not None:
                args["auth"] = auth.to_cbor()
            with pytest.raises(kind, match=match):
                await api.call("block.get", args)
        assert service.stats["blocks_served"] == served
        # Malformed auths and CIDs are malformed, not a crash.
        for text in ("!!!", good.to_text() + "A", "x" * 600):
            wire_error(await get_block_raw(http, cid, text), 400, "malformed")
        for text in ("bafy", "Q" + cid.text[1:], cid.text.upper()):
            wire_error(await get_block_raw(http, text, None), 400, "malformed")
        missing = CID.of(CODEC_RAW, b"never stored")
        wire_error(await get_block_raw(http, missing, None), 404, "not-found")
        # The right BAT reads it, inline or as the registered mirror BAT.
        assert cid.matches(await api.get_block(cid, secret))
        mirror = bats.make_read_auth(alice.data.mirror_bat, cid, b"", node_id, now, hashed=True)
        response = await get_block_raw(http, cid, mirror.to_text())
        assert response.status_code == 200
        assert cid.matches(response.content)


async def test_tampered_fragment_is_corrupted_never_data(
    running_node: RunningNode, fs: FileSystem
) -> None:
    with trio.fail_after(TIMEOUT):
        await fs.write_file("big.bin", io.BytesIO(b"secret " * 2000))
    store = running_node.store
    fragments = [
        (raw, store.get_block(raw) or b"")
        for raw in store.block_cids()
        if CID.from_bytes(raw).codec == CODEC_RAW
    ]
    assert fragments
    for raw, data in fragments:
        flipped = data[:-1] + bytes([data[-1] ^ 1])  # inside the AEAD tag
        store.put(Space.BLOCKS, store.block_key(raw) or b"", flipped)
    with trio.fail_after(TIMEOUT), unchanged(running_node.store):
        pieces: list[bytes] = []
        with pytest.raises(Corrupted, match="corrupt"):
            await read_into(fs, "big.bin", pieces)
        assert pieces == [], "no plaintext of a corrupt block is ever returned"
        # The node passes a fragment on without hashing it or checking LevelDB's CRC (see
        # test_store): the reader's own check, above, is what refuses it.


async def test_tampered_structured_blocks_are_corrupted(
    running_node: RunningNode, alice: Session, fs: FileSystem
) -> None:
    """The home directory node, the WriterData root and the CHAMP root, each damaged on disk."""
    store = running_node.store
    pointer = PointerUpdate.decode(store.get(Space.POINTERS, alice.owner.raw) or b"")
    tree = WriterData.decode(store.get_block(pointer.new.raw) or b"").tree
    targets = {"home": await home_node(running_node, alice), "root": pointer.new, "tree": tree}
    for which, cid in targets.items():
        data = store.get_block(cid.raw) or b""
        key = store.block_key(cid.raw) or b""
        damaged = {
            "flip": data[:-1] + bytes([data[-1] ^ 1]),
            "truncate": data[:-1],
            "append": data + b"\0",
            "swap": store.get_block(targets["root" if which != "root" else "tree"].raw),
        }
        for damage, bad in damaged.items():
            store.put(Space.BLOCKS, key, bad or b"")
            # A FileSystem is one command: it keeps the blocks it verified, so each try is new.
            with trio.fail_after(TIMEOUT), unchanged(store), pytest.raises(Corrupted):
                await FileSystem(alice).listdir("")
            store.put(Space.BLOCKS, key, data)
            assert await FileSystem(alice).listdir("") == [], f"{which} {damage}: restored"


async def test_node_returning_a_block_that_does_not_match_its_cid(
    running_node: RunningNode,
    api: NodeApi,
    alice: Session,
    fs: FileSystem,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lying node: the client checks every block it receives against the CID it asked for."""
    cid = await home_node(running_node, alice)
    honest = running_node.service.get_block
    pointer = PointerUpdate.decode(running_node.store.get(Space.POINTERS, alice.owner.raw) or b"")

    async def lying(
        asked: CID, auth: bats.ReadAuth | None, requester: bytes, owner: CID | None = None
    ) -> bytes:
        data = await honest(asked, auth, requester, owner)
        return data + b"\0" if asked in (cid, pointer.new) else data

    monkeypatch.setattr(running_node.service, "get_block", lying)
    with trio.fail_after(TIMEOUT):
        with pytest.raises(Corrupted, match="does not match its hash"):
            await api.get_block(cid, alice.home.bat)
        with pytest.raises(Corrupted, match="does not match its hash"):
            await api.get_block(pointer.new)
        with pytest.raises(Corrupted):
            await fs.listdir("")


# -- the HTTP API -----------------------------------------------------------------------------


BAD_CALLS: list[tuple[str, bytes, int, str, str]] = [
    ("node.info", b"\xff\x00", 400, "malformed", "invalid CBOR"),
    ("node.info", b"\x1c", 400, "malformed", "invalid CBOR"),
    ("node.info", b"\xa1\x61a", 400, "malformed", "invalid CBOR"),  # truncated
    ("node.info", b"\xa2\x61b\x01\x61a\x02", 400, "malformed", "canonical"),  # key order
    ("node.info", b"\xb8\x00", 400, "malformed", "canonical"),  # long length form
    ("node.info", b"\xa1\x61a\x18\x01", 400, "malformed", "canonical"),  # long int form
    ("node.info", b"\xa0\xa0", 400, "malformed", "canonical"),  # trailing bytes
    ("node.info", b"\xbf\xff", 400, "malformed", "indefinite"),
    ("node.info", b"\xa1\x61a\xf9\x3c\x00", 400, "malformed", "float"),
    ("node.info", b"\xa1\x01\x02", 400, "malformed", "keys must be text"),
    ("node.info", b"\xa2\x61a\x01\x61a\x02", 400, "malformed", "Duplicate"),
    ("node.info", b"\xa1\x61a\xd8\x2b\x00", 400, "malformed", "tag 43"),
    ("node.info", b"\x81" * 100 + b"\x00", 400, "malformed", "depth"),
    ("node.info", b"\x80", 400, "malformed", "must be a CBOR map"),
    ("node.info", b"\x61x", 400, "malformed", "must be a CBOR map"),
    ("no.such.method", b"\xa0", 404, "not-found", "unknown method"),
    ("account.params", cbor.encode({"username": 5}), 400, "malformed", "'username'"),
    ("account.params", cbor.encode({}), 400, "malformed", "'username'"),
    ("account.params", cbor.encode({"username": "x" * 65}), 400, "invalid-name", "32"),
    ("pki.lookup", cbor.encode({"username": "Not Valid"}), 400, "invalid-name", "a-z"),
    ("pointer.get", cbor.encode({"writer": "alice"}), 400, "malformed", "'writer'"),
    ("block.get", cbor.encode({"cid": b"\x01"}), 400, "malformed", "'cid'"),
    ("block.get", b"\xa1ccid\xd8\x2a\x42\x00\x01", 400, "malformed", "tag 42"),
    ("champ.get", cbor.encode({"root": champ.EMPTY_ROOT, "keys": "k"}), 400, "malformed", "keys"),
    ("champ.get", cbor.encode({"root": champ.EMPTY_ROOT, "keys": []}), 400, "malformed", "keys"),
    ("pointer.cas", cbor.encode({"owner": True, "updates": []}), 400, "malformed", "owner"),
    ("account.signup", cbor.encode({"claim": 1}), 400, "malformed", "claim"),
    ("usage.get", cbor.encode({"owner": STRANGER, "time": "now"}), 400, "malformed", "'time'"),
    ("usage.get", cbor.encode({"owner": 7}), 400, "malformed", "'owner'"),
    ("admin.gc", cbor.encode({"token": ""}), 403, "denied", "admin token"),
    ("admin.gc", cbor.encode({"token": b"x"}), 400, "malformed", "'token'"),
]


async def test_malformed_calls_over_http(
    running_node: RunningNode, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(TIMEOUT), unchanged(running_node.store):
        for method, body, status, code, match in BAD_CALLS:
            response = await post_raw(http, method, body)
            message = wire_error(response, status, code)
            assert match.lower() in message.lower(), (method, body, message)


async def test_undecodable_bodies_never_reach_the_method_table(
    running_node: RunningNode, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(TIMEOUT), no_calls(running_node), unchanged(running_node.store):
        for method, body in [("node.info", b"\xff"), ("nope", b"\xa0"), ("node.info", b"\x80")]:
            response = await post_raw(http, method, body)
            assert 400 <= response.status_code < 500


class _Zeros(httpx.AsyncByteStream):
    """A request body that is not an async generator, so an early answer leaves no warning."""

    def __init__(self, size: int) -> None:
        self.left = size

    def __aiter__(self) -> _Zeros:
        return self

    async def __anext__(self) -> bytes:
        if self.left <= 0:
            raise StopAsyncIteration
        n = min(self.left, MiB)
        self.left -= n
        return bytes(n)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_oversized_body_is_too_large(
    running_node: RunningNode, http: httpx.AsyncClient, framing: str
) -> None:
    size = MAX_BODY_BYTES + 1
    assert size > 9 * MiB
    with trio.fail_after(TIMEOUT), no_calls(running_node), unchanged(running_node.store):
        request = http.build_request("POST", f"{API_PREFIX}/call/block.put")
        request.headers["content-type"] = CBOR_TYPE
        del request.headers["content-length"]
        if framing == "content-length":
            request.headers["content-length"] = str(size)
        else:
            request.headers["transfer-encoding"] = "chunked"
        request.stream = _Zeros(size)
        response = await http.send(request)
    assert "at most" in wire_error(response, 413, "too-large")
    assert response.headers["connection"] == "close"  # the rest of the body is never read
    assert ERRORS_BY_CODE["too-large"] is TooLarge  # what NodeApi raises for this reply


async def test_body_at_the_limit_is_read_and_judged(http: httpx.AsyncClient) -> None:
    overhead = len(cbor.encode({"pad": bytes(MiB)})) - MiB
    body = cbor.encode({"pad": bytes(MAX_BODY_BYTES - overhead)})
    assert len(body) == MAX_BODY_BYTES
    with trio.fail_after(TIMEOUT):
        response = await post_raw(http, "block.put", body)  # a method that carries blocks
    wire_error(response, 400, "malformed")  # not refused for its size: judged by the method


async def test_wrong_paths_and_verbs_answer_in_cbor(
    running_node: RunningNode, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(TIMEOUT), unchanged(running_node.store):
        wire_error(await http.get("/"), 404, "not-found")
        wire_error(await http.get(f"{API_PREFIX}/nothing"), 404, "not-found")
        wire_error(await http.post(f"{API_PREFIX}/call/a/b", content=b"\xa0"), 404, "not-found")
        wire_error(await http.get(f"{API_PREFIX}/call/node.info"), 405, "malformed")
        wire_error(await http.put(f"{API_PREFIX}/block/x"), 405, "malformed")
        # A body the node does not read ends its connection, so that it is held no longer.
        answer = await http.post(f"{API_PREFIX}/nothing", content=bytes(1024))
        wire_error(answer, 404, "not-found")
        assert answer.headers["connection"] == "close"


async def test_internal_errors_leak_nothing(
    running_node: RunningNode,
    api: NodeApi,
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "s3cr3t-detail /work/main/node/server/_service.py"

    async def broken_method(node: NodeService, args: Any, requester: bytes) -> Any:
        raise RuntimeError(secret)

    async def broken_read(cid: CID, auth: Any, requester: bytes) -> bytes:
        raise KeyError(secret)

    monkeypatch.setitem(METHODS, "node.info", broken_method)
    monkeypatch.setattr(running_node.service, "get_block", broken_read)
    with trio.fail_after(TIMEOUT):
        responses = [
            await post_raw(http, "node.info", b"\xa0"),
            await http.get(f"{API_PREFIX}/block/{champ.EMPTY_ROOT.text}"),
        ]
        for response in responses:
            assert response.status_code == 500
            assert response.headers["content-type"] == CBOR_TYPE
            assert cbor.decode(response.content) == {
                "error": "internal",
                "message": "internal error",
            }
            for leak in (b"s3cr3t", b"Traceback", b"_service", b"RuntimeError", b"KeyError"):
                assert leak not in response.content
        with pytest.raises(PyrgosError, match="internal error") as caught:
            await api.call("node.info")
        assert caught.type is PyrgosError


# -- names ------------------------------------------------------------------------------------


BAD_PATHS = [
    ("a\x00b", "NUL"),
    ("..", "'..'"),
    ("docs/../escape", "'..'"),
    ("/alice/..", "'..'"),
    ("x" * 256, "1-255 bytes"),
    ("é" * 128, "1-255 bytes"),  # 128 characters, 256 bytes
    ("a/" * 2048 + "b", "4096"),
]
BAD_NAMES = [
    ("a/b", "'/'"),
    ("/", "'/'"),
    ("nul\x00", "NUL"),
    (".", "'.'"),
    ("..", "'..'"),
    ("", "1-255 bytes"),
    ("x" * 256, "1-255 bytes"),
    ("\udc80", "UTF-8"),
]


def opener(data: bytes) -> Any:
    return lambda: contextlib.nullcontext(io.BytesIO(data))


async def test_invalid_paths_via_the_filesystem(running_node: RunningNode, fs: FileSystem) -> None:
    with trio.fail_after(TIMEOUT):
        await fs.mkdir("docs")
    for path, match in BAD_PATHS:
        # Writes are refused before anything is sent.
        with trio.fail_after(TIMEOUT), no_calls(running_node), unchanged(running_node.store):
            with pytest.raises(InvalidName, match=match):
                await fs.mkdir(path)
            with pytest.raises(InvalidName, match=match):
                await fs.mkdir(path, parents=True)
            with pytest.raises(InvalidName, match=match):
                await fs.write_file(path, io.BytesIO(b"data"))
            with pytest.raises(InvalidName, match=match):
                await fs.write_files(path, [("ok.txt", opener(b"data"))])
            with pytest.raises(InvalidName, match=match):
                await fs.move("docs", path)
            with pytest.raises(InvalidName, match=match):
                await fs.move(path, "docs")
            with pytest.raises(InvalidName, match=match):
                await fs.remove(path, recursive=True)
        with trio.fail_after(TIMEOUT), unchanged(running_node.store):
            with pytest.raises(InvalidName, match=match):
                await fs.listdir(path)
            with pytest.raises(InvalidName, match=match):
                await fs.stat(path)
    with trio.fail_after(TIMEOUT):
        assert [item.name for item in await fs.listdir("")] == ["docs"]


async def test_invalid_file_names_via_the_filesystem(
    running_node: RunningNode, fs: FileSystem
) -> None:
    with trio.fail_after(TIMEOUT), no_calls(running_node), unchanged(running_node.store):
        for name, match in BAD_NAMES:
            with pytest.raises(InvalidName, match=match):
                await fs.write_files("", [(name, opener(b"x"))])
            with pytest.raises(InvalidName, match=match):  # one bad name spoils the batch
                await fs.write_files("", [("fine.txt", opener(b"x")), (name, opener(b"x"))])


async def test_longest_valid_name_is_accepted(fs: FileSystem) -> None:
    name = "é" * 127 + "x"  # 255 bytes
    with trio.fail_after(TIMEOUT):
        await fs.mkdir(name)
        assert [item.name for item in await fs.listdir("")] == [name]


# -- quota ------------------------------------------------------------------------------------


async def test_write_over_quota_changes_nothing(small_quota_node: RunningNode) -> None:
    node = small_quota_node
    with trio.fail_after(TIMEOUT):
        async with NodeApi(node.url) as api:
            bob = await signup(api, "bob", PASSWORD)
            fs = FileSystem(bob)
            used, quota = await fs.usage()
            assert quota == 64 * 1024
            assert used < quota
            pointer = await api.call("pointer.get", {"writer": bob.owner})
            with unchanged(node.store), pytest.raises(QuotaExceeded, match="quota of 65536"):
                await fs.write_file("big.bin", io.BytesIO(bytes(100_000)))
            assert await fs.usage() == (used, quota)
            assert await api.call("pointer.get", {"writer": bob.owner}) == pointer
            assert await fs.listdir("") == []
            await fs.write_file("small.txt", io.BytesIO(b"fits"))  # within quota: still works
            assert [item.name for item in await fs.listdir("")] == ["small.txt"]


async def test_signup_over_quota_stores_nothing(tmp_path: Path, nursery: trio.Nursery) -> None:
    node = await start_node(
        nursery, Store(tmp_path / "tiny-db"), test_mode=True, default_quota=1024
    )
    empty = snapshot(node.store)  # a new node holds only its empty PKI log
    with trio.fail_after(TIMEOUT):
        async with NodeApi(node.url) as api:
            with pytest.raises(QuotaExceeded, match="exceed the quota"):
                await signup(api, "erin", PASSWORD)
    assert snapshot(node.store) == empty
