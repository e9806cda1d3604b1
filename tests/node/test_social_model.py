"""A model test of sharing: random mkdir, write, overwrite, rm, mv, share, unshare and link
steps by three users homed on three nodes, checked against an in-memory model after every
step (simulations/model.py). Each user's view of their own folders, of what is shared with
them, and of what is no longer shared with them must equal the model's."""

from __future__ import annotations

import random

import pytest
import trio

from node.client import NodeApi
from simulations import model as m
from tests.node.conftest import Users

USERS = ("alice", "bob", "carol")
STEPS = 40


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_every_view_equals_the_model(users: Users, seed: int) -> None:
    rng = random.Random(seed)
    model = m.Model.empty(USERS)

    async def anyone() -> NodeApi:
        return NodeApi(rng.choice(users.urls))

    with trio.fail_after(240):
        await m.befriend(users.fs, USERS)
        await m.make_tops(users.fs, USERS)
        assert await m.mismatches(users.fs, model, USERS) == []
        trace = []
        for _ in range(STEPS):
            op = m.choose(model, USERS, rng)
            if op is None:
                continue
            await m.run(op, users.fs, users.urls[0], anyone, model)
            m.apply(model, op)
            trace.append(str(op))
            assert await m.mismatches(users.fs, model, USERS) == [], trace
