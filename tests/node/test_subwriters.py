"""Sub-writers (DESIGN §4, issue 8): owner proofs in the identity root register a writer to its
owner in one atomic commit, the writer then commits on its signatures alone (no session of
the owner), a collection keeps its tree for the owner, and a dropped writer is forgotten."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import trio

from node.client import NodeApi, Session, change_password, signup
from node.client import _session as client_session
from node.server._gc import reachable_bytes
from node.store import Space
from protocols import cbor
from protocols.cid import CID, CODEC_DAG_CBOR
from protocols.crypto import SigningKey
from protocols.errors import Denied, InvalidSignature, MalformedInput
from protocols.owners import CONTEXT, OwnerProof
from protocols.pointers import PointerUpdate
from protocols.writerdata import WriterData
from tests.node.conftest import PASSWORD, RunningNode
from tests.node.test_bad_input import put, root_of, structured, unchanged

TIMEOUT = 30


@pytest.fixture
async def bare(running_node: RunningNode) -> AsyncIterator[NodeApi]:
    """A client of the same node with no session (as a sharee writing alice's item has)."""
    async with NodeApi(running_node.url) as client:
        yield client


def sub_root(writer: SigningKey, n: int = 0) -> bytes:
    """A WriterData of `writer` whose tree is a distinct one-entry CHAMP node."""
    tree = CID.of(CODEC_DAG_CBOR, structured(n))
    return WriterData(controller=writer.public.key_hash(), tree=tree).encode()


async def commit(api: NodeApi, owner: CID, updates: list[tuple[CID, PointerUpdate]]) -> object:
    return await api.call(
        "pointer.cas",
        {"owner": owner, "updates": [[w, u.encode()] for w, u in updates]},
    )


async def set_owned(
    api: NodeApi, session: Session, owned: list[bytes], *extra: tuple[CID, PointerUpdate]
) -> PointerUpdate:
    """Commit alice's identity root with `owned` (and `extra` updates in the same commit)."""
    pointer, writer_data = await root_of(api, session)
    (new,) = await put(
        api, session.owner, [replace(writer_data, owned=owned).encode()], session.identity
    )
    update = PointerUpdate.create(session.identity, pointer.new, new, pointer.sequence + 1)
    await commit(api, session.owner, [(session.owner, update), *extra])
    return update


async def create_sub_writer(api: NodeApi, session: Session, writer: SigningKey) -> PointerUpdate:
    """The owner's root with the proof and the writer's first root, in one commit; the first
    blocks of a writer not yet registered are put by the owner's identity writer."""
    blocks = [structured(0), sub_root(writer)]
    _, root = await put(api, session.owner, blocks, session.identity)
    first = PointerUpdate.create(writer, None, root, 1)
    proof = OwnerProof.create(writer, session.owner).encode()
    await set_owned(api, session, [proof], (writer.public.key_hash(), first))
    return first


async def test_a_sub_writer_is_registered_and_writes_without_a_session(
    running_node: RunningNode, api: NodeApi, bare: NodeApi, alice: Session
) -> None:
    writer = SigningKey.generate()
    w = writer.public.key_hash()
    store = running_node.store
    with trio.fail_after(TIMEOUT):
        first = await create_sub_writer(api, alice, writer)
        assert store.get(Space.WRITERS, w.raw) == alice.owner.raw
        assert await bare.call("pointer.get", {"writer": w}) == first.encode()
        # The sharee (no session of alice's) puts and commits as the writer.
        before = reachable_bytes(store, alice.owner, 0)
        blocks = [structured(1), sub_root(writer, 1)]
        _, root = await put(bare, alice.owner, blocks, writer)
        second = PointerUpdate.create(writer, first.new, root, 2)
        assert await commit(bare, alice.owner, [(w, second)]) is True
        assert await bare.call("pointer.get", {"writer": w}) == second.encode()
        # Puts count against the owner's quota.
        assert reachable_bytes(store, alice.owner, 0) > before


async def test_the_identity_writer_still_needs_a_session(
    running_node: RunningNode, api: NodeApi, bare: NodeApi, alice: Session
) -> None:
    with trio.fail_after(TIMEOUT):
        with unchanged(running_node.store), pytest.raises(Denied, match="needs a session"):
            await put(bare, alice.owner, [structured(7)], alice.identity)
        pointer, writer_data = await root_of(bare, alice)
        (new,) = await put(
            api, alice.owner, [replace(writer_data, owned=[]).encode()], alice.identity
        )
    with trio.fail_after(TIMEOUT), unchanged(running_node.store, Space.POINTERS, Space.WRITERS):
        update = PointerUpdate.create(alice.identity, pointer.new, new, pointer.sequence + 1)
        with pytest.raises(Denied, match="needs a session"):
            await commit(bare, alice.owner, [(alice.owner, update)])
        # Nor does a sub-writer's update in the same commit stand in for the session.
        writer = SigningKey.generate()
        _, root = await put(api, alice.owner, [structured(0), sub_root(writer)], alice.identity)
        proof = OwnerProof.create(writer, alice.owner).encode()
        (with_proof,) = await put(
            api, alice.owner, [replace(writer_data, owned=[proof]).encode()], alice.identity
        )
        own = PointerUpdate.create(alice.identity, pointer.new, with_proof, pointer.sequence + 1)
        sub = (writer.public.key_hash(), PointerUpdate.create(writer, None, root, 1))
        with pytest.raises(Denied, match="needs a session"):
            await commit(bare, alice.owner, [(alice.owner, own), sub])


async def test_a_writer_without_a_proof_cannot_commit(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    writer = SigningKey.generate()
    with trio.fail_after(TIMEOUT):
        _, root = await put(api, alice.owner, [structured(0), sub_root(writer)], alice.identity)
        first = PointerUpdate.create(writer, None, root, 1)
        with unchanged(running_node.store), pytest.raises(Denied, match="homed on this node"):
            await commit(api, alice.owner, [(writer.public.key_hash(), first)])
        with unchanged(running_node.store), pytest.raises(Denied, match="homed on this node"):
            await put(api, alice.owner, [structured(3)], writer)


def forged(writer: SigningKey, owner: CID, signer: SigningKey) -> bytes:
    """A proof that names `writer` but is signed by `signer`."""
    w = writer.public.key_hash()
    return cbor.encode([[owner, w], signer.sign(cbor.encode([owner, w]), CONTEXT)])


async def test_bad_owner_proofs_change_nothing(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    writer, other = SigningKey.generate(), SigningKey.generate()
    with trio.fail_after(TIMEOUT):
        _, root = await put(api, alice.owner, [structured(0), sub_root(writer)], alice.identity)
    first = (writer.public.key_hash(), PointerUpdate.create(writer, None, root, 1))
    good = OwnerProof.create(writer, alice.owner).encode()
    elsewhere = OwnerProof.create(writer, other.public.key_hash()).encode()
    cases: list[tuple[list[bytes], type[Exception], str]] = [
        ([forged(writer, alice.owner, other)], InvalidSignature, "not signed by the writer"),
        ([elsewhere], InvalidSignature, "another owner"),
        ([OwnerProof.create(alice.identity, alice.owner).encode()], MalformedInput, "itself"),
        ([good, good], MalformedInput, "listed twice"),
        ([good[:-1] + bytes([good[-1] ^ 1])], InvalidSignature, "not signed"),
        ([b"\x80"], MalformedInput, "owner proof"),
        ([cbor.encode([[alice.owner, "w"], bytes(64)])], MalformedInput, "public-key hash"),
    ]
    for owned, error, message in cases:
        with trio.fail_after(TIMEOUT):
            pointer, writer_data = await root_of(api, alice)
            (new,) = await put(
                api, alice.owner, [replace(writer_data, owned=owned).encode()], alice.identity
            )
            update = PointerUpdate.create(alice.identity, pointer.new, new, pointer.sequence + 1)
            kept = unchanged(running_node.store, Space.POINTERS, Space.WRITERS)
            with kept, pytest.raises(error, match=message):
                await commit(api, alice.owner, [(alice.owner, update), first])


async def test_a_writer_claimed_by_two_owners(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    writer = SigningKey.generate()
    with trio.fail_after(TIMEOUT):
        await create_sub_writer(api, alice, writer)
        async with NodeApi(running_node.url) as bob_api:
            bob = await signup(bob_api, "bob", PASSWORD)
            proof = OwnerProof.create(writer, bob.owner).encode()
            kept = unchanged(running_node.store, Space.POINTERS, Space.WRITERS)
            with kept, pytest.raises(Denied, match="already belongs to another user"):
                await set_owned(bob_api, bob, [proof])
            # Nor can bob list alice's identity as his writer.
            proof = OwnerProof.create(alice.identity, bob.owner).encode()
            kept = unchanged(running_node.store, Space.POINTERS, Space.WRITERS)
            with kept, pytest.raises(Denied, match="already belongs to another user"):
                await set_owned(bob_api, bob, [proof])
            # And bob cannot commit alice's writer under his name.
            (root,) = await put(api, alice.owner, [sub_root(writer, 5)], alice.identity)
            pointer = PointerUpdate.decode(
                await api.call("pointer.get", {"writer": writer.public.key_hash()})
            )
            update = PointerUpdate.create(writer, pointer.new, root, pointer.sequence + 1)
            with pytest.raises(Denied, match="does not belong to that owner"):
                await commit(bob_api, bob.owner, [(writer.public.key_hash(), update)])
    assert running_node.store.get(Space.WRITERS, writer.public.key_hash().raw) == alice.owner.raw


async def test_a_collection_keeps_a_sub_writers_tree_and_forgets_a_dropped_one(
    running_node: RunningNode, api: NodeApi, bare: NodeApi, alice: Session
) -> None:
    writer = SigningKey.generate()
    w = writer.public.key_hash()
    store, service = running_node.store, running_node.service
    with trio.fail_after(TIMEOUT):
        first = await create_sub_writer(api, alice, writer)
        await service.collect_garbage()
        assert store.has_block(first.new.raw)
        used = service.blocks.usage(alice.owner)[0]
        assert used == reachable_bytes(store, alice.owner, 0)
        assert used >= len(store.get_block(first.new.raw) or b"")
        # Dropped from `owned`: unregistered and its pointer gone in the same commit.
        await set_owned(api, alice, [])
        assert not store.has(Space.WRITERS, w.raw)
        assert not store.has(Space.POINTERS, w.raw)
        with pytest.raises(Denied, match="homed on this node"):
            await put(bare, alice.owner, [structured(9)], writer)
        await service.collect_garbage()
        assert not store.has_block(first.new.raw)
        # A dropped writer may be owned again later (a fresh first pointer).
        await create_sub_writer(api, alice, writer)
        assert store.get(Space.WRITERS, w.raw) == alice.owner.raw


async def test_a_commit_cannot_drop_a_writer_and_update_it(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    writer = SigningKey.generate()
    w = writer.public.key_hash()
    with trio.fail_after(TIMEOUT):
        first = await create_sub_writer(api, alice, writer)
        (root,) = await put(api, alice.owner, [sub_root(writer, 2)], alice.identity)
        later = PointerUpdate.create(writer, first.new, root, 2)
        kept = unchanged(running_node.store, Space.POINTERS, Space.WRITERS)
        with kept, pytest.raises(Denied, match="homed on this node"):
            await set_owned(api, alice, [], (w, later))


async def test_a_password_change_keeps_the_owned_writers(
    running_node: RunningNode, api: NodeApi, bare: NodeApi, alice: Session
) -> None:
    writer = SigningKey.generate()
    w = writer.public.key_hash()
    with trio.fail_after(TIMEOUT):
        first = await create_sub_writer(api, alice, writer)
        await change_password(alice, PASSWORD, "a brand new passphrase")
        assert running_node.store.get(Space.WRITERS, w.raw) == alice.owner.raw
        (root,) = await put(bare, alice.owner, [sub_root(writer, 4)], writer)
        later = PointerUpdate.create(writer, first.new, root, 2)
        assert await commit(bare, alice.owner, [(w, later)]) is True


async def test_a_signup_whose_root_owns_writers_is_refused(
    running_node: RunningNode, api: NodeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    def owning(**fields: Any) -> WriterData:
        proof = OwnerProof.create(SigningKey.generate(), fields["controller"]).encode()
        return WriterData(**fields, owned=[proof])

    monkeypatch.setattr(client_session, "WriterData", owning)
    refused = pytest.raises(MalformedInput, match="owns no other writers")
    with trio.fail_after(TIMEOUT), unchanged(running_node.store), refused:
        await signup(api, "carol", PASSWORD)
