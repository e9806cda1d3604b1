"""Tests of protocols.pointers: the signed update format and every rule of `check_update`."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import cbor
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW, MH_IDENTITY
from protocols.crypto import SigningKey
from protocols.errors import Conflict, InvalidSignature, MalformedInput, StaleRoot, TooLarge
from protocols.pointers import MAX_SEQUENCE, PointerUpdate, check_update
from protocols.writerdata import WriterData, controller_of

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WRITER = SigningKey.from_seed(bytes(range(32)))
OTHER = SigningKey.from_seed(bytes(range(1, 33)))


def writer_data(n: int, controller: SigningKey = WRITER) -> bytes:
    tree = CID.of(CODEC_DAG_CBOR, b"champ root %d" % n)
    return WriterData(controller=controller.public.key_hash(), tree=tree).encode()


class PointerStore:
    """What a home node keeps for one writer: its stored blocks and its current pointer."""

    def __init__(self, writer: SigningKey = WRITER) -> None:
        self.writer = writer
        self.blocks: dict[CID, bytes] = {}
        self.current: PointerUpdate | None = None

    def store(self, block: bytes) -> CID:
        cid = CID.of(CODEC_DAG_CBOR, block)
        self.blocks[cid] = block
        return cid

    def cas(self, update: PointerUpdate) -> None:
        block = self.blocks.get(update.new)
        target = None if block is None else controller_of(block)
        # Through the wire form, as a node receives it.
        update = PointerUpdate.decode(update.encode())
        check_update(self.writer.public, self.current, update, target)
        self.current = update


ROOTS = [CID.of(CODEC_DAG_CBOR, writer_data(n)) for n in range(8)]


@pytest.fixture
def store() -> PointerStore:
    pointers = PointerStore()
    for n in range(8):
        pointers.store(writer_data(n))
    return pointers


def update(
    previous: CID | None, new: CID, sequence: int, signer: SigningKey = WRITER
) -> PointerUpdate:
    return PointerUpdate.create(signer, previous, new, sequence)


# --- format ------------------------------------------------------------------------------------

cids = st.builds(CID.of, st.sampled_from([CODEC_RAW, CODEC_DAG_CBOR]), st.binary(max_size=8))


@given(
    previous=st.none() | cids,
    new=st.binary(max_size=8).map(lambda data: CID.of(CODEC_DAG_CBOR, data)),
    sequence=st.integers(1, MAX_SEQUENCE),
)
def test_encode_decode_round_trip(previous: CID | None, new: CID, sequence: int) -> None:
    signed = update(previous, new, sequence)
    assert signed.signed_part == cbor.encode([previous, new, sequence])
    assert len(signed.signature) == 64
    encoded = signed.encode()
    assert encoded == cbor.encode([[previous, new, sequence], signed.signature])
    assert len(encoded) <= 512
    assert PointerUpdate.decode(encoded) == signed
    assert PointerUpdate.from_cbor(signed.to_cbor()) == signed


SIG = bytes(64)
NEW = ROOTS[0]
BAD_UPDATES: dict[str, Any] = {
    "not a list": {"previous": None},
    "empty": [],
    "one element": [[None, NEW, 1]],
    "three elements": [[None, NEW, 1], SIG, SIG],
    "body not a list": [b"body", SIG],
    "body of two": [[None, NEW], SIG],
    "body of four": [[None, NEW, 1, 0], SIG],
    "previous bytes": [[NEW.raw, NEW, 1], SIG],
    "previous text": [[NEW.text, NEW, 1], SIG],
    "new missing": [[None, None, 1], SIG],
    "new raw": [[None, CID.of(CODEC_RAW, b"x"), 1], SIG],
    "new identity": [[None, CID(CODEC_DAG_CBOR, MH_IDENTITY, b"x"), 1], SIG],
    "new bytes": [[None, NEW.raw, 1], SIG],
    "sequence zero": [[None, NEW, 0], SIG],
    "sequence negative": [[None, NEW, -1], SIG],
    "sequence too big": [[None, NEW, MAX_SEQUENCE + 1], SIG],
    "sequence bool": [[None, NEW, True], SIG],
    "sequence text": [[None, NEW, "1"], SIG],
    "sequence null": [[None, NEW, None], SIG],
    "signature short": [[None, NEW, 1], bytes(63)],
    "signature long": [[None, NEW, 1], bytes(65)],
    "signature text": [[None, NEW, 1], "x" * 64],
    "signature missing": [[None, NEW, 1], None],
}


@pytest.mark.parametrize("value", BAD_UPDATES.values(), ids=BAD_UPDATES.keys())
def test_decode_rejects_malformed(value: Any) -> None:
    with pytest.raises(MalformedInput):
        PointerUpdate.from_cbor(value)
    with pytest.raises(MalformedInput):
        PointerUpdate.decode(cbor.encode(value))


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff", bytes.fromhex("82"), cbor.encode([[None, NEW, 1], SIG]) + b"\x00"],
)
def test_decode_rejects_bad_cbor(data: bytes) -> None:
    with pytest.raises(MalformedInput):
        PointerUpdate.decode(data)


def test_decode_size_limit() -> None:
    with pytest.raises(TooLarge):
        PointerUpdate.decode(cbor.encode([[None, NEW, 1], bytes(600)]))


SAMPLE = update(ROOTS[0], ROOTS[1], 7).encode()


@FUZZ
@given(data=st.binary(max_size=200) | st.builds(
    lambda at, byte, cut: (SAMPLE[:at] + bytes([byte]) + SAMPLE[at + 1 :])[:cut],
    st.integers(0, len(SAMPLE) - 1), st.integers(0, 255), st.integers(0, len(SAMPLE)),
))  # fmt: skip
def test_decode_fuzz(data: bytes) -> None:
    with contextlib.suppress(MalformedInput, TooLarge):
        assert PointerUpdate.decode(data).encode() == data


# --- check_update ------------------------------------------------------------------------------


def test_first_update(store: PointerStore) -> None:
    store.cas(update(None, ROOTS[0], 1))
    assert store.current is not None
    assert store.current.new == ROOTS[0]


def test_first_update_may_start_above_one(store: PointerStore) -> None:
    store.cas(update(None, ROOTS[0], 42))
    assert store.current is not None
    assert store.current.sequence == 42


def test_first_update_must_name_no_previous(store: PointerStore) -> None:
    with pytest.raises(StaleRoot):
        store.cas(update(ROOTS[1], ROOTS[0], 1))
    assert store.current is None


def test_chain_of_updates(store: PointerStore) -> None:
    previous: CID | None = None
    for sequence, root in enumerate(ROOTS, start=1):
        store.cas(update(previous, root, sequence))
        previous = root
    assert store.current is not None
    assert store.current.new == ROOTS[-1]
    assert store.current.sequence == len(ROOTS)


def test_sequence_may_jump(store: PointerStore) -> None:
    store.cas(update(None, ROOTS[0], 1))
    store.cas(update(ROOTS[0], ROOTS[1], 1000))
    store.cas(update(ROOTS[1], ROOTS[2], MAX_SEQUENCE))


def test_pointer_may_be_rewritten_to_the_same_target(store: PointerStore) -> None:
    store.cas(update(None, ROOTS[0], 1))
    store.cas(update(ROOTS[0], ROOTS[0], 2))


def test_replayed_update_is_refused(store: PointerStore) -> None:
    first, second = update(None, ROOTS[0], 1), update(ROOTS[0], ROOTS[1], 2)
    store.cas(first)
    store.cas(second)
    for old in (first, second):
        with pytest.raises(Conflict):
            store.cas(old)
    assert store.current == second


def test_replay_after_the_pointer_came_back_is_refused(store: PointerStore) -> None:
    # A -> B -> A: the old A -> B update names the right previous, but its sequence is spent.
    store.cas(update(None, ROOTS[0], 1))
    a_to_b = update(ROOTS[0], ROOTS[1], 2)
    store.cas(a_to_b)
    store.cas(update(ROOTS[1], ROOTS[0], 3))
    with pytest.raises(Conflict, match="replayed or out of order") as raised:
        store.cas(a_to_b)
    assert type(raised.value) is Conflict


@pytest.mark.parametrize("sequence", [1, 2])
def test_sequence_must_increase(store: PointerStore, sequence: int) -> None:
    store.cas(update(None, ROOTS[0], 1))
    store.cas(update(ROOTS[0], ROOTS[1], 2))
    with pytest.raises(Conflict, match="replayed or out of order") as raised:
        store.cas(update(ROOTS[1], ROOTS[2], sequence))
    assert type(raised.value) is Conflict  # not a stale root: re-reading would not help


def test_out_of_order_updates(store: PointerStore) -> None:
    store.cas(update(None, ROOTS[0], 1))
    second, third = update(ROOTS[0], ROOTS[1], 2), update(ROOTS[1], ROOTS[2], 3)
    with pytest.raises(Conflict):  # the third before the second
        store.cas(third)
    store.cas(second)
    store.cas(third)
    with pytest.raises(Conflict):  # the second again, after the third
        store.cas(second)
    assert store.current == third


def test_stale_previous_is_a_stale_root(store: PointerStore) -> None:
    store.cas(update(None, ROOTS[0], 1))
    store.cas(update(ROOTS[0], ROOTS[1], 2))
    with pytest.raises(StaleRoot):
        store.cas(update(ROOTS[0], ROOTS[2], 3))
    with pytest.raises(StaleRoot):
        store.cas(update(None, ROOTS[2], 3))
    with pytest.raises(StaleRoot):
        store.cas(update(ROOTS[5], ROOTS[2], 3))


def test_concurrent_writers_lose_with_a_stale_root(store: PointerStore) -> None:
    # Two devices read the pointer at (A, 1) and both propose sequence 2. The loser must be
    # told the root moved on (StaleRoot), which clients retry, not that it replayed.
    store.cas(update(None, ROOTS[0], 1))
    store.cas(update(ROOTS[0], ROOTS[1], 2))
    with pytest.raises(StaleRoot):
        store.cas(update(ROOTS[0], ROOTS[2], 2))
    assert store.current is not None
    assert store.current.new == ROOTS[1]


def test_wrong_signer(store: PointerStore) -> None:
    with pytest.raises(InvalidSignature):
        store.cas(update(None, ROOTS[0], 1, signer=OTHER))
    assert store.current is None


@pytest.mark.parametrize(
    "change",
    [
        {"sequence": 2},
        {"new": ROOTS[1]},
        {"previous": ROOTS[2]},
        {"signature": bytes(64)},
        {"signature": update(None, ROOTS[0], 1).signature[::-1]},
    ],
)
def test_tampered_update_fails_its_signature(store: PointerStore, change: dict[str, Any]) -> None:
    signed = update(None, ROOTS[0], 1)
    with pytest.raises(InvalidSignature):
        store.cas(replace(signed, **change))


def test_signature_is_checked_before_any_other_rule(store: PointerStore) -> None:
    store.cas(update(None, ROOTS[0], 1))
    with pytest.raises(InvalidSignature):  # stale, replayed and not stored, but forged first
        store.cas(update(None, CID.of(CODEC_DAG_CBOR, b"absent"), 1, signer=OTHER))


def test_signature_is_domain_separated() -> None:
    body = cbor.encode([None, ROOTS[0], 1])
    forged = PointerUpdate(None, ROOTS[0], 1, WRITER.sign(body, b"pyrgos/other/1"))
    with pytest.raises(InvalidSignature):
        check_update(WRITER.public, None, forged, WRITER.public.key_hash())


def test_target_not_stored(store: PointerStore) -> None:
    with pytest.raises(Conflict, match="not a stored WriterData") as raised:
        store.cas(update(None, CID.of(CODEC_DAG_CBOR, b"never stored"), 1))
    assert type(raised.value) is Conflict
    assert store.current is None


def test_target_not_writer_data(store: PointerStore) -> None:
    for block in (cbor.encode({"v": 1}), cbor.encode([1, 2]), b"\xff not cbor"):
        with pytest.raises(Conflict, match="not a stored WriterData"):
            store.cas(update(None, store.store(block), 1))


def test_target_with_wrong_controller(store: PointerStore) -> None:
    foreign = store.store(writer_data(99, controller=OTHER))
    with pytest.raises(Conflict, match="controller") as raised:
        store.cas(update(None, foreign, 1))
    assert type(raised.value) is Conflict
    assert store.current is None


def test_target_too_large_for_writer_data(store: PointerStore) -> None:
    # Any stored block can be named, a 1 MiB one too: it is simply not a WriterData.
    big = store.store(cbor.encode({"v": 1, "pad": bytes(64 * 1024)}))
    with pytest.raises(Conflict, match="not a stored WriterData"):
        store.cas(update(None, big, 1))
