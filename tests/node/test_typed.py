"""Typed calls (node/client/_typed.py) against a real node: requests of protocols/methods.py
in, checked replies out; a malformed answer is Corrupted."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from node.client import NodeApi, Session
from node.client._typed import request
from protocols import methods
from protocols.errors import Corrupted, Denied

TIMEOUT = 30


async def test_typed_calls_reach_the_node(api: NodeApi, alice: Session) -> None:
    with trio.fail_after(TIMEOUT):
        info = await request(api, methods.NodeInfo(), methods.NodeInfoReply)
        assert info.node == (await api.node_id()).decode()
        pointer = await request(
            api, methods.PointerGet(alice.owner, alice.owner), methods.PointerGetReply
        )
        assert pointer.update is not None
        live = await request(api, methods.SessionCheck(alice.owner), methods.SessionReply)
        assert live.session is None  # a check answers the expiry of the token the api added
        assert live.expiry > 0
        api.session = None
        with pytest.raises(Denied, match="needs a session"):
            await request(api, methods.SessionCheck(alice.owner), methods.SessionReply)


async def test_a_typed_call_holds_the_answer_to_its_reply_type() -> None:
    class Liar(NodeApi):
        async def call(self, method: str, args: dict[str, Any] | None = None) -> Any:
            return {"node": 5}

    async with Liar("http://127.0.0.1:9") as liar:
        with pytest.raises(Corrupted, match=r"node\.info"):
            await request(liar, methods.NodeInfo(), methods.NodeInfoReply)
        with pytest.raises(TypeError):
            await request(liar, methods.NodeInfo(), methods.Done)
