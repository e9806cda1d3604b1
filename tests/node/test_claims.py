"""A user's PKI claim is renewed by their own logins before it runs out."""

from __future__ import annotations

import time

import pytest
import trio

from node.client import NodeApi, Session, _session, login, signup
from protocols.pki import CLAIM_LIFETIME, Claim
from tests.node.conftest import PASSWORD, RunningNode

DAY = 24 * 3600
TIMEOUT = 60


async def current_claim(api: NodeApi, username: str) -> Claim:
    return Claim.from_cbor(await api.call("pki.lookup", {"username": username}))


async def test_a_login_near_the_expiry_renews_the_claim(
    api: NodeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patched:
        patched.setattr(_session, "CLAIM_LIFETIME", 10 * DAY)  # a claim made 355 days ago
        with trio.fail_after(TIMEOUT):
            await signup(api, "carol", PASSWORD)
    with trio.fail_after(TIMEOUT):
        before = await current_claim(api, "carol")
        assert before.expiry <= time.time() + 10 * DAY
        await login(api, "carol", PASSWORD)
        after = await current_claim(api, "carol")
    assert after.expiry >= time.time() + CLAIM_LIFETIME - 60
    assert (after.identity, after.home, after.mirrors) == (
        before.identity,
        before.home,
        before.mirrors,
    )
    with trio.fail_after(TIMEOUT):
        await login(api, "carol", PASSWORD)  # the renewed claim is the one logins now read
        assert await current_claim(api, "carol") == after  # far from expiry: left alone


async def test_a_login_far_from_the_expiry_writes_nothing_to_the_pki(
    api: NodeApi, alice: Session, running_node: RunningNode
) -> None:
    pki = running_node.service.pki
    assert pki is not None
    with trio.fail_after(TIMEOUT):
        before, seq = await current_claim(api, "alice"), pki.seq()
        await login(api, "alice", PASSWORD)
        assert await current_claim(api, "alice") == before
    assert pki.seq() == seq
