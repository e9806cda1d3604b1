"""Every method of the node's table, called through each entry point the transports use
(NodeService.call, the HTTP app, the rpc server) with typed random arguments, mutated valid
calls and worst-case bodies: each call ends in a result or a typed error reply (never
'internal', never a crash), within the CPU budget.

The node is real (a LevelDB store in a temporary directory) and holds a user, so calls reach
past argument checks into stored state. Each example runs in its own trio.run, so hypothesis
can shrink a failing call.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from node.client import FileSystem, NodeApi, login, signup
from node.net import API_PREFIX, MAX_BODY_BYTES, build_app
from node.net._rpc import serve_rpc
from node.server import METHODS, NodeService
from node.store import Space, Store
from protocols import accounts, bats, cbor, champ, methods, rpc
from protocols.blocks import sign_put
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW, encode_varint
from protocols.crypto import SigningKey
from protocols.errors import ERRORS_BY_CODE, MalformedInput, PyrgosError, TooLarge
from protocols.frames import FrameDecoder, encode_frame
from protocols.pki import Claim, NodeRecord, record_to_cbor
from protocols.pointers import PointerUpdate
from simulations.swarm import new_node
from tests.fuzz.budget import (
    FUZZ_CALLS,
    describe,
    is_known,
    shape,
    shape_bytes,
    within_budget_async,
)
from tests.fuzz.inputs import (
    LINKS,
    decoded_values,
    ints,
    mutated_bytes,
    mutated_value,
    sized_bytes,
)

TIMEOUT = 30  # seconds any one call may take before the example fails
CBOR_TYPE = "application/cbor"
PASSWORD = "correct horse battery"
ORIGIN = "http://node.test"
PEER = "12D3KooWBU4rBscvZFhiC8EyuuuEMPLQJGVggB3Sew9HaNqsRnVp"  # the rpc caller's peer id
STRANGER = SigningKey.from_seed(bytes(range(32)))


class AsgiTransport:
    """The API's HTTP requests, as HttpTransport sends them, answered by the app in-process."""

    def __init__(self, app: Any) -> None:
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=ORIGIN, trust_env=False
        )

    async def post_call(self, method: str, body: list[bytes]) -> tuple[int, bytes]:
        headers = {"content-type": CBOR_TYPE}
        answer = await self._client.post(
            f"{API_PREFIX}/call/{method}", content=b"".join(body), headers=headers
        )
        return answer.status_code, answer.content

    async def get_block(self, cid: str, params: dict[str, str]) -> tuple[int, bytes]:
        answer = await self._client.get(f"{API_PREFIX}/block/{cid}", params=params)
        return answer.status_code, answer.content

    async def aclose(self) -> None:
        await self._client.aclose()


class RecordingApi(NodeApi):
    """The real client over the app in-process, keeping every call it makes."""

    def __init__(self, app: Any) -> None:
        super().__init__(ORIGIN, transport=AsgiTransport(app))
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def call(self, method: str, args: dict[str, Any] | None = None) -> Any:
        if self.session is not None and methods.METHODS[method].session:  # as NodeApi sends it
            args = {"session": self.session, **(args or {})}
        self.calls.append((method, dict(args or {})))
        return await super().call(method, args)


class Node:
    """The node under test, the valid calls its client made, and values it holds.

    A plain class, so a failing example prints as one word, not the megabytes it holds."""

    def __init__(
        self,
        service: NodeService,
        store: Store,
        app: Any,
        valid_calls: list[tuple[str, dict[str, Any]]],
        owner: CID,
        cids: list[CID],
        identity: SigningKey,
    ) -> None:
        self.service, self.store, self.app = service, store, app
        self.valid_calls, self.owner, self.cids, self.identity = valid_calls, owner, cids, identity

    def __repr__(self) -> str:
        return "Node(alice)"


async def _populate(service: NodeService, app: Any) -> tuple[RecordingApi, Any]:
    api = RecordingApi(app)
    session = await signup(api, "alice", PASSWORD)
    fs = FileSystem(session)
    await fs.write_file("small.txt", io.BytesIO(b"hello"))
    await fs.write_file("big.bin", io.BytesIO(bytes(6000)))
    await fs.usage()
    await login(api, "alice", PASSWORD)
    return api, session


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    store = Store(Path(tmp_path_factory.mktemp("fuzz-node")) / "db")
    service = new_node(store, default_quota=64 * 1024 * 1024)
    app = build_app(service)
    api, session = trio.run(_populate, service, app)
    cids = [CID.from_bytes(raw) for raw in list(store.keys(Space.BLOCK_INDEX))[:12]]
    calls = list(api.calls)
    # Calls the client makes rarely or never, built valid by hand: a claim and a node record
    # for the PKI, a read of a stored block, a batch CHAMP lookup.
    fresh = SigningKey.generate()
    claim = Claim.create(fresh, "bob", service.settings.node_id, int(time.time()) + 3600)
    node_key = SigningKey.generate()
    calls += [
        ("pki.submit", {"record": record_to_cbor(claim)}),
        (
            "pki.submit",
            {"record": record_to_cbor(NodeRecord.create(node_key, ["/ip4/1.2.3.4"], 1))},
        ),
        ("pki.entries", {"after": 0, "limit": 10}),
        ("block.get", {"cid": cids[0]}),
        ("champ.get", {"root": champ.EMPTY_ROOT, "keys": [bytes(32)]}),
    ]
    yield Node(service, store, app, calls, session.owner, cids, session.identity)
    store.close()


# -- typed arguments ----------------------------------------------------------------------------


def _typed(node: Node) -> dict[str, st.SearchStrategy[Any]]:
    """For each argument name, values of the right type (often ones the node holds)."""
    key_hashes = st.sampled_from([node.owner, STRANGER.public.key_hash(), *LINKS])
    cids = st.sampled_from([*node.cids, *LINKS, champ.EMPTY_ROOT])
    signature = st.binary(min_size=64, max_size=64)
    now_ms = int(time.time() * 1000)
    auths = st.builds(
        lambda secret, cid, exp: bats.ReadAuth(bats.inline_id(secret), exp, bytes(32)).to_cbor(),
        st.binary(min_size=32, max_size=32),
        cids,
        ints,
    )
    blocks = st.lists(
        st.tuples(
            st.sampled_from([CODEC_RAW, CODEC_DAG_CBOR, 0, -1]),
            st.one_of(sized_bytes, decoded_values.map(cbor.encode)),
        ).map(list),
        max_size=9,
    )
    claims = st.sampled_from(
        [call[1]["claim"] for call in node.valid_calls if call[0] == "account.signup"]
    )
    pointers = st.sampled_from(
        [PointerUpdate.decode(raw).encode() for raw in _values(node, "pointer")]
    )
    return {
        "owner": key_hashes,
        "writer": key_hashes,
        "cid": cids,
        "root": cids,
        "auth": st.one_of(st.none(), auths),
        "upload": st.one_of(st.none(), st.binary(min_size=16, max_size=16), sized_bytes),
        "blocks": blocks,
        "sigs": st.lists(signature, max_size=9),
        "keys": st.lists(st.one_of(st.binary(min_size=32, max_size=32), sized_bytes), max_size=65),
        "updates": st.lists(st.tuples(key_hashes, pointers).map(list), max_size=17),
        "uploads": st.lists(st.binary(min_size=16, max_size=16), max_size=17),
        "claim": st.one_of(claims, claims.flatmap(lambda c: mutated_value([c]))),
        "login_key": st.just(STRANGER.public.to_cbor()),
        "login_data": sized_bytes,
        "mirror_bat": sized_bytes,
        "pointer": st.one_of(pointers, mutated_bytes(_values(node, "pointer"))),
        "username": st.sampled_from(["alice", "bob", "admin", "", "a" * 65, "Alice", "a/b"]),
        "time": st.one_of(st.just(now_ms), ints),
        "sig": signature,
        "after": ints,
        "limit": ints,
        "record": st.one_of(
            st.sampled_from(_values(node, "record")),
            mutated_value(_values(node, "record")),
        ),
        "token": st.text(max_size=40),
        "session": st.one_of(st.sampled_from(_values(node, "session")), sized_bytes),
        "all": st.one_of(st.booleans(), decoded_values),
        "target": key_hashes,
        "identity": key_hashes,
        "request": st.one_of(st.binary(min_size=2184, max_size=2184), sized_bytes),
        "label": st.one_of(st.binary(min_size=16, max_size=16), sized_bytes),
        "proof": st.one_of(st.binary(min_size=32, max_size=32), sized_bytes),
        "bat": st.one_of(st.binary(min_size=34, max_size=34), sized_bytes),
        "expiry": ints,
        "mac": st.one_of(st.binary(min_size=32, max_size=32), sized_bytes),
        "mirror": st.one_of(st.text(max_size=40), st.just("pyrgos-mirror-1:AAAA")),
        "ids": st.lists(st.one_of(st.binary(min_size=16, max_size=16), sized_bytes), max_size=9),
    }


def _values(node: Node, name: str) -> list[Any]:
    return [args[name] for _, args in node.valid_calls if name in args]


# The arguments each method takes (protocols/methods.py).
ARGUMENTS: dict[str, list[str]] = {
    "node.info": [],
    "block.get": ["cid", "auth", "owner"],
    "block.put": ["owner", "writer", "upload", "blocks", "sigs", "session"],
    "champ.get": ["root", "keys", "owner"],
    "pointer.get": ["writer", "owner"],
    "pointer.cas": ["owner", "updates", "uploads", "session"],
    "account.signup": [
        "claim",
        "login_key",
        "login_data",
        "mirror_bat",
        "pointer",
        "blocks",
        "sigs",
        "token",
    ],
    "account.params": ["username"],
    "account.login": ["username", "time", "sig"],
    "account.update": [
        "username",
        "login_key",
        "login_data",
        "pointer",
        "uploads",
        "time",
        "sig",
    ],
    "usage.get": ["owner", "time", "sig", "session"],
    "session.check": ["owner", "session"],
    "session.end": ["owner", "session", "all"],
    "pki.lookup": ["username", "identity"],
    "pki.status": [],
    "pki.entries": ["after", "limit"],
    "pki.submit": ["record"],
    "admin.gc": ["token"],
    "social.send": ["target", "request"],
    "social.list": ["owner", "time", "sig"],
    "social.remove": ["owner", "ids", "time", "sig"],
    "link.get": ["owner", "label", "proof"],
    "mirror.account": ["username", "bat", "expiry", "mac"],
    "admin.mirror.add": ["token", "mirror"],
    "admin.mirror.list": ["token"],
    "admin.mirror.remove": ["token", "username"],
    "account.migrate": ["claim"],
    "mirror.handoff": ["claim"],
}
MISSING = object()


def test_every_method_is_fuzzed() -> None:
    """A method added to the table needs its arguments named here (and typed in _typed)."""
    assert set(ARGUMENTS) == set(METHODS) == set(methods.METHODS)
    for name, spec in methods.METHODS.items():  # every argument the request type takes
        assert set(ARGUMENTS[name]) == set(spec.request.__dataclass_fields__), name


@st.composite
def _arguments(draw: st.DrawFn, node: Node, method: str) -> Any:
    """Mostly the right types, some junk, some missing; now and then not a map at all."""
    if draw(st.integers(0, 19)) == 0:
        return draw(decoded_values)
    typed = _typed(node)
    args: dict[str, Any] = {}
    for name in ARGUMENTS[method]:
        choice = draw(st.integers(0, 9))
        if choice < 7:
            args[name] = draw(typed.get(name, decoded_values))  # a new argument: junk
        elif choice < 9:
            args[name] = draw(decoded_values)
    if draw(st.integers(0, 9)) == 0:
        args[draw(st.text(max_size=8))] = draw(decoded_values)
    return args


# -- the three entry points ---------------------------------------------------------------------


def _check_wire_error(code: object, message: object, where: str) -> None:
    assert code in ERRORS_BY_CODE, f"{where}: error code {code!r} is not a typed error"
    assert isinstance(message, str), f"{where}: error without a message"
    assert message, f"{where}: error without a message"
    assert "Traceback" not in message


async def via_service(node: Node, key: str, method: str, args: Any) -> None:
    _, error, _ = await within_budget_async(
        key, lambda: node.service.call(method, args), describe(args)
    )
    if error is not None and not isinstance(error, PyrgosError):
        raise error


async def _post(node: Node, method: str, body: bytes, content_type: str = CBOR_TYPE) -> Any:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=node.app), base_url=ORIGIN, trust_env=False
    ) as client:
        return await client.post(
            f"{API_PREFIX}/call/{method}", content=body, headers={"content-type": content_type}
        )


async def via_http(
    node: Node, key: str, method: str, body: bytes, content_type: str = CBOR_TYPE
) -> None:
    response, error, _ = await within_budget_async(
        key, lambda: _post(node, method, body, content_type), f"{method}: {describe(body)}"
    )
    if error is not None:
        raise error
    if response.status_code == 200:
        cbor.decode(response.content, limit=16 * 1024 * 1024)
        return
    assert 400 <= response.status_code < 600
    assert response.headers["content-type"] == CBOR_TYPE
    reply = cbor.decode(response.content)
    assert set(reply) == {"error", "message"}
    _check_wire_error(reply["error"], reply["message"], f"HTTP {method}")


async def _rpc_exchange(node: Node, frame: bytes) -> list[Any]:
    """Send one frame to the rpc server; every reply it sends before it ends the stream."""
    client, server = trio.testing.memory_stream_pair()
    replies: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_rpc, server, PEER, node.service.call)
        await client.send_all(frame)
        await client.send_eof()
        decoder = FrameDecoder(rpc.MAX_FRAME)
        while data := await client.receive_some(1024 * 1024):
            replies += decoder.feed(data)
    return replies


async def via_rpc(node: Node, key: str, frame: bytes, answered: bool = True) -> None:
    replies, error, _ = await within_budget_async(
        key, lambda: _rpc_exchange(node, frame), describe(frame)
    )
    if error is not None:
        raise error
    assert replies is not None
    assert len(replies) <= 1
    if answered:
        assert len(replies) == 1, "a request with an id got no reply"
    for message in replies:
        reply = rpc.parse_reply(message)
        if reply.error is not None:
            _check_wire_error(reply.error.code, reply.error.message, f"rpc {key}")


async def call_everywhere(node: Node, key: str, method: str, args: Any, where: str) -> None:
    with trio.fail_after(TIMEOUT):
        if where == "service":
            await via_service(node, key, method, args)
        elif where == "http":
            await via_http(node, key, method, cbor.encode(args))
        else:
            request = {"id": 1, "method": method, "args": args}
            await via_rpc(node, key, encode_frame(request))


# Text an HTTP client can put in a URL path segment or query (it escapes the rest).
_URL_TEXT = st.text(
    st.characters(
        min_codepoint=0x21, exclude_categories=["Cc", "Cs"], exclude_characters="/?#%&\\"
    ),
    max_size=80,
)
ENTRY_POINTS = ["service", "http", "rpc"]


@pytest.mark.parametrize("method", sorted(METHODS))
@FUZZ_CALLS
@given(data=st.data())
def test_methods_with_typed_random_arguments(node: Node, method: str, data: st.DataObject) -> None:
    args = data.draw(_arguments(node, method), label="args")
    where = data.draw(st.sampled_from(ENTRY_POINTS), label="entry point")
    trio.run(call_everywhere, node, method, method, args, where)


@FUZZ_CALLS
@given(data=st.data())
def test_mutated_valid_calls(node: Node, data: st.DataObject) -> None:
    """Real calls of the client (signup, puts, compare-and-swaps, logins), then changed."""
    method, args = data.draw(st.sampled_from(node.valid_calls), label="call")
    where = data.draw(st.sampled_from(ENTRY_POINTS), label="entry point")
    if where == "http" and data.draw(st.booleans(), label="mutate bytes"):
        body = data.draw(mutated_bytes([cbor.encode(args)]), label="body")
        trio.run(_mutated_http, node, method, body)
        return
    mutated = data.draw(mutated_value([args]), label="args")
    trio.run(call_everywhere, node, method, method, mutated, where)


async def _mutated_http(node: Node, method: str, body: bytes) -> None:
    with trio.fail_after(TIMEOUT):
        await via_http(node, method, method, body)


@FUZZ_CALLS
@given(
    method=st.one_of(
        st.sampled_from(sorted(METHODS)),
        _URL_TEXT,
    ),
    body=st.one_of(st.binary(max_size=512), decoded_values.map(cbor.encode)),
    content_type=st.sampled_from([CBOR_TYPE, "text/plain", "application/json", ""]),
)
def test_http_random_bodies(node: Node, method: str, body: bytes, content_type: str) -> None:
    method = method or "node.info"

    async def post() -> None:
        with trio.fail_after(TIMEOUT):
            await via_http(node, "http", method, body, content_type)

    trio.run(post)


@FUZZ_CALLS
@given(
    message=st.one_of(
        decoded_values,
        st.fixed_dictionaries(
            {
                "id": ints,
                "method": st.one_of(st.sampled_from(sorted(METHODS)), st.text()),
                "args": decoded_values,
            }
        ),
    ),
    junk=st.binary(max_size=64),
)
def test_rpc_random_frames(node: Node, message: Any, junk: bytes) -> None:
    """Whole frames of any message, or garbage: answered when they carry an id, else the
    stream ends; nothing else."""
    frame = encode_frame(message) if not junk else encode_frame(message) + junk
    answered = rpc.request_id(message) is not None and not junk
    trio.run(via_rpc, node, "rpc", frame, answered)


# -- worst cases --------------------------------------------------------------------------------

BOMBS = ["empty-arrays", "small-ints", "many-keys", "cids"]


@pytest.mark.parametrize("bomb", BOMBS)
@pytest.mark.parametrize("method", ["node.info", "block.put", "nope"])
def test_http_body_bombs(node: Node, method: str, bomb: str) -> None:
    """A body at the size limit built for the most decoding work: the anonymous freeze."""
    key = f"http/{bomb}"
    body = shape(bomb, shape_bytes(key, MAX_BODY_BYTES))

    async def post() -> None:
        with trio.fail_after(TIMEOUT):
            await via_http(node, key, method, body)

    trio.run(post)


@pytest.mark.parametrize("bomb", BOMBS)
def test_rpc_frame_bombs(node: Node, bomb: str) -> None:
    key = f"rpc/{bomb}"
    body = shape(bomb, shape_bytes(key, rpc.MAX_FRAME - 16))
    trio.run(via_rpc, node, key, encode_varint(len(body)) + body, False)


@pytest.mark.parametrize("method", ["block.put", "account.signup"])
def test_structured_block_bombs(node: Node, method: str) -> None:
    """Dag-cbor blocks of the most decoding work, signed by the user's writer, filling a put."""
    key = f"{method}/dag-cbor-bombs"
    per_block = shape_bytes(key, 1024 * 1024)
    blocks = [shape(name, per_block - 16) + b"" for name in BOMBS] * 2
    blocks = [b for b in blocks if len(b) <= per_block]
    cids = [CID.of(CODEC_DAG_CBOR, b) for b in blocks]
    base = dict(next(args for m, args in node.valid_calls if m == method))
    base["blocks"] = [[CODEC_DAG_CBOR, b] for b in blocks]
    base["sigs"] = [sign_put(node.identity, cid) for cid in cids]
    if method == "block.put":
        base["upload"] = bytes(16)
    assert is_known(key) or per_block == 1024 * 1024
    trio.run(call_everywhere, node, key, method, base, "service")


def fresh_session(node: Node) -> bytes:
    """A live session token of the user: the fuzzed calls before may have ended the recorded
    ones (a session.end with a recorded token) and throttled the user's logins."""
    with node.store.batch() as batch:
        token, _ = node.service.accounts.open_session(batch, node.owner)
    return token


def test_logged_in_calls_reach_the_rules(node: Node) -> None:
    """The seeded calls are valid: a usage query signed now is answered, not refused."""
    signed = int(time.time() * 1000)
    token = fresh_session(node)
    args = {
        "owner": node.owner,
        "time": signed,
        "sig": accounts.sign_timed(node.identity, accounts.USAGE, [node.owner], signed),
        "session": token,
    }
    result = trio.run(node.service.call, "usage.get", args)
    assert set(result) == {"used", "quota"}
    methods = {method for method, _ in node.valid_calls}
    assert {"account.signup", "block.put", "pointer.cas", "account.login"} <= methods


def test_block_get_of_a_stored_bomb(node: Node) -> None:
    """A structured block of the most decoding work, stored before puts checked structured
    blocks, is parsed for its BATs at every read, anonymous included: bounded decoding
    refuses it within the budget."""
    key = "block.get/dag-cbor-bombs"
    block = shape("empty-arrays", shape_bytes(key, 1024 * 1024) - 16)
    cid = CID.of(CODEC_DAG_CBOR, block)
    with node.store.batch() as batch:
        node.store.put_block(batch, cid.raw, block)

    async def read() -> None:
        with trio.fail_after(TIMEOUT):
            await via_service(node, key, "block.get", {"cid": cid})
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=node.app), base_url=ORIGIN, trust_env=False
            ) as client:
                response, error, _ = await within_budget_async(
                    key, lambda: client.get(f"{API_PREFIX}/block/{cid.text}"), "a block GET"
                )
                assert error is None
                assert response is not None
                assert response.status_code in (200, 403, 404, 413)

    trio.run(read)


CHAINS = 64  # one per key of a champ.get, each as deep as a CHAMP goes


def test_champ_get_down_deep_chains(node: Node) -> None:
    """A CHAMP built to make a batch lookup walk the most nodes: 64 groups of 4 keys that
    share 248 bits each hang 64 chains of ~50 nodes; one key down each chain walks them all."""
    key = "champ.get/deep-chains"
    blocks = champ.MemoryBlocks()
    entries: dict[bytes, CID] = {}
    for group in range(CHAINS):
        prefix = bytes([group]) * 31
        for last in range(4):
            entries[prefix + bytes([last])] = LINKS[3]
    root = finish_sync(champ.build(blocks, entries))
    with node.store.batch() as batch:
        for cid, data in blocks.blocks.items():
            node.store.put_block(batch, cid.raw, data)
    keys = [bytes([group]) * 31 + b"\x07" for group in range(CHAINS)]
    trio.run(call_everywhere, node, key, "champ.get", {"root": root, "keys": keys}, "service")


def finish_sync(coroutine: Any) -> Any:
    """Run a coroutine that never suspends (its block source is a dict) to its result."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the coroutine suspended")


@FUZZ_CALLS
@given(data=st.data())
def test_block_route_with_random_parameters(node: Node, data: st.DataObject) -> None:
    """GET /block/<cid>?auth=…&owner=…: texts of stored and unknown CIDs, read auths and
    owners, valid and mutated, answer a block or a typed error."""
    cid = data.draw(st.one_of(st.sampled_from([c.text for c in node.cids]), _URL_TEXT), label="cid")
    auth = bats.ReadAuth(bats.inline_id(bytes(32)), int(time.time()), bytes(32)).to_text()
    params = {}
    if data.draw(st.booleans(), label="with auth"):
        params["auth"] = data.draw(st.one_of(st.just(auth), _URL_TEXT), label="auth")
    if data.draw(st.booleans(), label="with owner"):
        params["owner"] = data.draw(
            st.one_of(st.just(node.owner.text), st.just(node.cids[0].text), _URL_TEXT),
            label="owner",
        )

    async def read() -> None:
        with trio.fail_after(TIMEOUT):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=node.app), base_url=ORIGIN, trust_env=False
            ) as client:
                response, error, _ = await within_budget_async(
                    "block-route",
                    lambda: client.get(f"{API_PREFIX}/block/{cid}", params=params),
                    f"GET {cid!r} {params!r}",
                )
        assert error is None
        assert response is not None
        if response.status_code != 200:
            reply = cbor.decode(response.content)
            _check_wire_error(reply["error"], reply["message"], "block GET")

    trio.run(read)


def test_put_over_quota_recounts_within_the_budget(node: Node) -> None:
    """A put that would cross the quota recounts the user's reachable bytes exactly, under
    the write lock, decoding every structured block the user's root reaches. Structured
    blocks of the most decoding work are refused at put, so what a recount decodes stays
    small: the bombs cost their refusal only, and the recount a put at the quota causes keeps
    the budget."""
    key = "block.put/over-quota-recount"
    bombs = [shape(name, 1024 * 1024 - 16) for name in BOMBS]
    owner, identity = node.owner, node.identity
    session = fresh_session(node)

    def put_args(blocks: list[bytes], codec: int = CODEC_DAG_CBOR) -> dict[str, Any]:
        cids = [CID.of(codec, block) for block in blocks]
        return {
            "owner": owner,
            "writer": owner,
            "blocks": [[codec, block] for block in blocks],
            "sigs": [sign_put(identity, cid) for cid in cids],
            "session": session,
        }

    async def run() -> None:
        with trio.fail_after(TIMEOUT * 4):
            for bomb in bombs:
                with pytest.raises((MalformedInput, TooLarge)):
                    await node.service.call("block.put", put_args([bomb]))
            usage = cbor.decode(node.store.get(Space.USAGE, owner.raw) or b"")
            usage["reachable"], usage["added"] = usage["quota"], 0  # full, by the running count
            with node.store.batch() as batch:
                batch.put(Space.USAGE, owner.raw, cbor.encode(usage))
            await via_service(node, key, "block.put", put_args([b"one more"], CODEC_RAW))

    trio.run(run)
