"""An in-process swarm: nodes that reach each other by direct calls instead of libp2p.

The node logic is the real `NodeService`; only the transport is replaced, so tests exercise
forwarding, relaying and the PKI without sockets between nodes. No encoding, framing, faults
or virtual time: for those, simulations/network.py.
"""

from __future__ import annotations

from typing import Any

from node.server import NodeService, NodeSettings, PkiLog
from node.store import Store
from protocols import bats
from protocols.cid import CID
from protocols.crypto import SigningKey
from protocols.errors import Corrupted, Unavailable
from protocols.peerid import peer_id_of
from protocols.pki import NodeRecord

GiB = 1024**3


# The key of every node made here, by id: the swarm publishes each node's record with it.
NODE_KEYS: dict[str, SigningKey] = {}


def new_node(
    store: Store,
    *,
    pki_node: str | None = None,
    test_mode: bool = True,
    default_quota: int = GiB,
    key: SigningKey | None = None,
) -> NodeService:
    """A node with `key` (default: a fresh one): the PKI node itself, or a mirror of `pki_node`."""
    key = key or SigningKey.generate()
    node_id = peer_id_of(key.public)
    NODE_KEYS[node_id] = key
    pki = PkiLog(store, pki_node or node_id, None if pki_node else key)
    settings = NodeSettings(node_id=node_id, test_mode=test_mode, default_quota=default_quota)
    return NodeService(store, settings, pki=pki)


class LocalNetwork:
    """The nodes of one process, by id; each node gets a `Network` view of the others."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeService] = {}
        self.down: set[str] = set()

    def add(self, service: NodeService) -> None:
        """Join `service` to the swarm; as a running node does at start, each node's record
        goes in its PKI node's log, so the PKI node knows it as a home for signups."""
        self.nodes[service.settings.node_id] = service
        service.network = LinkFrom(self, service.settings.node_id)
        for node in self.nodes.values():
            root = None if node.pki is None else self.nodes.get(node.pki.pki_node)
            key = NODE_KEYS.get(node.settings.node_id)
            if root is None or root.pki is None or root is node or key is None:
                continue
            if root.pki.node_record(node.settings.node_id) is None:
                root.pki.append(NodeRecord.create(key, [], 1))

    def target(self, node_id: str) -> NodeService:
        service = self.nodes.get(node_id)
        if service is None or node_id in self.down:
            raise Unavailable(f"node {node_id} cannot be reached")
        return service


class LinkFrom:
    """One node's view of the swarm: calls carry its id as the authenticated requester."""

    def __init__(self, swarm: LocalNetwork, node_id: str) -> None:
        self._swarm = swarm
        self._requester = node_id.encode()

    async def call(self, node_id: str, method: str, args: dict[str, Any]) -> Any:
        return await self._swarm.target(node_id).call(method, args, self._requester)

    async def fetch_block(self, node_id: str, cid: CID, auth: bats.ReadAuth | None) -> bytes:
        data = await self._swarm.target(node_id).get_block(cid, auth, self._requester)
        if not cid.matches(data):
            raise Corrupted(f"node {node_id} returned a block that does not match {cid}")
        return data

    async def fetch_many(self, node_id: str, wants: Any, receive: Any) -> None:
        for cid, auth in wants:
            await receive(cid, await self.fetch_block(node_id, cid, auth))
