"""A peer that completes the libp2p handshake, speaks a few valid frames, then sends garbage
or stalls, on the tunnel and on the block exchange: the node ends that stream only, and keeps
serving that peer's other streams, other peers and its users."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import pytest
import trio

from node.net import BLOCKS_PROTOCOL, RPC_PROTOCOL, Host, Stream, open_host
from protocols import blockexchange, cbor, rpc
from protocols.cid import CID, CODEC_RAW, encode_varint
from protocols.frames import FrameDecoder, encode_frame
from tests.e2e.conftest import p2p_address
from tests.faults.conftest import KiB, Target

# The `varint` package that multiaddr uses compares bytes with str, which `python -b` reports.
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:Comparison between bytes and string:BytesWarning:varint"),
]

VALID_FRAMES: Final = 3  # a peer in good standing, before it turns
BOUND: Final = 10.0  # seconds any one step may take on a loaded machine
STALLED_STREAMS: Final = 8
FLOOD: Final = 2000  # requests sent without reading an answer: past the stream's window
MAX_FRAMES: Final = {RPC_PROTOCOL: rpc.MAX_FRAME, BLOCKS_PROTOCOL: blockexchange.MAX_ANSWER_FRAME}


def frame(body: bytes) -> bytes:
    return encode_varint(len(body)) + body


# What a peer can send after its valid frames: each must end the stream (and only it).
GARBAGE: Final[dict[str, bytes]] = {
    "oversized-length": encode_varint(1 << 40),
    "endless-varint": b"\xff" * 12,
    "not-cbor": frame(b"\xff\xfe\xfd"),
    "non-canonical-cbor": frame(b"\xa2\x61b\x01\x61a\x02"),  # {"b": 1, "a": 2}: unsorted keys
    "trailing-bytes": frame(cbor.encode({"id": 9}) + b"\x00"),
    "wrong-shape": frame(cbor.encode([1, 2, 3])),
    "random": frame(bytes(range(256)) * 4),
}


@asynccontextmanager
async def peer(tmp_path: Path) -> AsyncIterator[Host]:
    """A stranger's libp2p host (dial only, its own key)."""
    async with open_host(tmp_path / f"peer-{os.urandom(4).hex()}.key", []) as host:
        yield host


class Conversation:
    """One stream to the node, frames in and out."""

    def __init__(self, stream: Stream, protocol: str) -> None:
        self.stream = stream
        self.protocol = protocol
        self.decoder = FrameDecoder(MAX_FRAMES[protocol])
        self.calls = 0

    async def receive(self) -> cbor.CBORValue:
        while True:
            data = await self.stream.receive_some(64 * KiB)
            assert data, "the node ended the stream of a peer in good standing"
            messages = self.decoder.feed(data)
            if messages:
                assert len(messages) == 1, messages
                return messages[0]

    async def valid_exchange(self, node_id: str) -> None:
        """One request the node must answer well."""
        if self.protocol == RPC_PROTOCOL:
            self.calls += 1
            await self.stream.send_all(encode_frame(rpc.request(self.calls, "node.info", {})))
            reply = rpc.parse_reply(await self.receive())
            assert reply.id == self.calls
            assert reply.unwrap()["node"] == node_id
        else:
            cid = CID.of(CODEC_RAW, os.urandom(32))  # stored nowhere
            await self.stream.send_all(encode_frame(blockexchange.request_message([(cid, None)])))
            answer = blockexchange.parse_answer(await self.receive())
            assert (answer.cid, answer.kind) == (cid, "dont-have")

    async def flood(self) -> None:
        """Send requests and never read the answers, until the node stops taking them."""
        frames = []
        for n in range(FLOOD):
            if self.protocol == RPC_PROTOCOL:
                message = rpc.request(1000 + n, "node.info", {})
            else:
                cid = CID.of(CODEC_RAW, n.to_bytes(4, "big"))
                message = blockexchange.request_message([(cid, None)])
            frames.append(encode_frame(message))
        with contextlib.suppress(trio.BrokenResourceError):
            for start in range(0, FLOOD, 100):
                await self.stream.send_all(b"".join(frames[start : start + 100]))

    async def ended_by_node(self) -> None:
        """The node ends the stream (a reset, or a close after an error reply)."""
        try:
            while await self.stream.receive_some(64 * KiB):
                pass
        except trio.BrokenResourceError:
            pass


async def node_answers(host: Host, node_id: str, addr: str, protocol: str) -> None:
    """A fresh stream to the node gets good answers, within the bound."""
    with trio.fail_after(BOUND):
        stream = await host.open_stream(node_id, [addr], protocol)
        talk = Conversation(stream, protocol)
        await talk.valid_exchange(node_id)
        await stream.aclose()


@pytest.mark.parametrize("protocol", [RPC_PROTOCOL, BLOCKS_PROTOCOL])
async def test_garbage_mid_stream(target: Target, tmp_path: Path, protocol: str) -> None:
    addr = await trio.to_thread.run_sync(p2p_address, target.node)
    node_id = addr.rsplit("/p2p/", 1)[1]
    with trio.fail_after(4 * BOUND * len(GARBAGE)):
        async with peer(tmp_path) as host:
            for garbage in GARBAGE.values():
                with trio.fail_after(BOUND):
                    talk = Conversation(await host.open_stream(node_id, [addr], protocol), protocol)
                    for _ in range(VALID_FRAMES):
                        await talk.valid_exchange(node_id)
                    await talk.stream.send_all(garbage)
                    await talk.ended_by_node()
                # The same peer, on the same connection, is still served.
                await node_answers(host, node_id, addr, protocol)
    await trio.to_thread.run_sync(target.check_acked)  # its user too
    assert target.node.process is not None
    assert target.node.process.poll() is None
    target.check_no_tracebacks()


@pytest.mark.parametrize("protocol", [RPC_PROTOCOL, BLOCKS_PROTOCOL])
async def test_stalled_peer(target: Target, tmp_path: Path, protocol: str) -> None:
    await trio.to_thread.run_sync(target.put, "kept.bin", 50 * KiB)
    addr = await trio.to_thread.run_sync(p2p_address, target.node)
    node_id = addr.rsplit("/p2p/", 1)[1]
    with trio.fail_after(6 * BOUND):
        async with peer(tmp_path) as staller, peer(tmp_path) as other:
            stalled = []
            for n in range(STALLED_STREAMS):
                talk = Conversation(await staller.open_stream(node_id, [addr], protocol), protocol)
                for _ in range(VALID_FRAMES):
                    await talk.valid_exchange(node_id)
                if n % 2:  # half a frame, then nothing
                    await talk.stream.send_all(encode_varint(1000) + bytes(500))
                # else: nothing at all, as if thinking forever
                stalled.append(talk)
            async with trio.open_nursery() as nursery:
                flooding = Conversation(
                    await staller.open_stream(node_id, [addr], protocol), protocol
                )
                nursery.start_soon(flooding.flood)
                await trio.sleep(0.5)  # the flood fills what the stream can hold
                # While those streams hang: the stalling peer's new streams, another peer and
                # the node's users are all served.
                await node_answers(staller, node_id, addr, protocol)
                await node_answers(other, node_id, addr, protocol)
                await trio.to_thread.run_sync(target.check_acked)
                nursery.cancel_scope.cancel()
        # The staller went away mid-frame: the node is none the worse.
        async with peer(tmp_path) as later:
            await node_answers(later, node_id, addr, protocol)
    assert target.node.process is not None
    assert target.node.process.poll() is None
    target.check_no_tracebacks()
