"""A mirror following its PKI node through the real NodeService sync, against a PKI node that
lies: forged entries and forked histories are refused, and the mirror keeps what it had."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from node.server import NodeService, PkiLog
from node.store import Store
from protocols import cbor
from protocols.crypto import SigningKey
from protocols.pki import CLAIM_LIFETIME, Claim, record_from_cbor
from simulations.swarm import LocalNetwork, new_node

Tamper = Callable[[dict[str, Any]], dict[str, Any]]


class LyingRoot(NodeService):
    """A PKI node whose answers to `pki.entries` pass through `tamper`."""

    tamper: Tamper | None = None

    async def call(self, method: str, args: Any, requester: bytes = b"") -> Any:
        reply = await super().call(method, args, requester)
        if method == "pki.entries" and self.tamper is not None:
            return self.tamper(reply)
        return reply


def claim_for(root: NodeService, name: str) -> dict[str, Any]:
    key = SigningKey.generate()
    expiry = int(time.time()) + CLAIM_LIFETIME // 2
    return {"claim": Claim.create(key, name, root.settings.node_id, expiry).to_cbor()}


def swarm_of(tmp_path: Path, key: SigningKey | None = None) -> tuple[LyingRoot, NodeService]:
    root = new_node(Store(tmp_path / "root"), key=key)
    root.__class__ = LyingRoot
    mirror = new_node(Store(tmp_path / "mirror"), pki_node=root.settings.node_id)
    swarm = LocalNetwork()
    swarm.add(root)
    swarm.add(mirror)
    assert isinstance(root, LyingRoot)
    return root, mirror


async def test_a_mirror_catches_up_and_looks_up_locally(tmp_path: Path) -> None:
    root, mirror = swarm_of(tmp_path)
    with trio.fail_after(30):
        for name in ("alice", "bob", "carol"):
            await root.call("pki.submit", {"record": claim_for(root, name)}, root.node_id_bytes)
        result = await mirror.sync_pki()
    assert result is not None
    assert result.refusal is None
    assert mirror.pki is not None
    assert root.pki is not None
    assert mirror.pki.seq() == root.pki.seq()
    assert mirror.home_of_username("bob") == root.settings.node_id


async def test_forged_entries_and_forks_are_refused(tmp_path: Path) -> None:
    root_key = SigningKey.generate()
    root, mirror = swarm_of(tmp_path, root_key)
    assert mirror.pki is not None
    with trio.fail_after(30):
        await root.call("pki.submit", {"record": claim_for(root, "alice")}, root.node_id_bytes)
        await mirror.sync_pki()
        held = mirror.pki.seq()

        def forge(page: dict[str, Any]) -> dict[str, Any]:
            entries = []
            for raw in page["entries"]:
                entry = cbor.decode(raw)
                claim = entry["record"].get("claim")
                if claim is not None:
                    claim["sig"] = bytes(64)  # a record its key never signed
                entries.append(cbor.encode(entry))
            return {**page, "entries": entries}

        await root.call("pki.submit", {"record": claim_for(root, "mallory")}, root.node_id_bytes)
        root.tamper = forge
        result = await mirror.sync_pki()
        assert result is not None
        assert result.refusal is not None
        assert mirror.pki.seq() == held
        assert mirror.pki.lookup("mallory") is None

        root.tamper = None
        await mirror.sync_pki()
        assert mirror.pki.lookup("mallory") is not None  # the honest page is accepted
        # Now the PKI node rewrites history: with its own key it signs a different entry at a
        # seq the mirror already holds.
        rewritten = PkiLog(Store(tmp_path / "rewritten"), root.settings.node_id, root_key)
        rewritten.append(record_from_cbor(claim_for(root, "eve")))
        forked = rewritten.page(0, 10)

        def serve_other_history(page: dict[str, Any]) -> dict[str, Any]:
            return forked.to_cbor()

        root.tamper = serve_other_history
        before = mirror.pki.seq()
        result = await mirror.sync_pki()
        assert result is not None
        assert result.refusal is not None
        assert mirror.pki.seq() == before
        refusals = (await mirror.call("pki.status", {}))["refusals"]
        assert {refusal["kind"] for refusal in refusals} == {"forged", "fork"}
        assert mirror.pki.lookup("eve") is None
