"""A mirror whose PKI node is away: it keeps serving from its copy, retries with a capped,
jittered backoff on virtual time, says so in `pki status`, and catches up when it returns."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

from node.daemon import follow_pki
from node.net import Libp2pNetwork
from node.net._host import Host
from node.server import NodeService
from node.store import Store
from protocols.crypto import SigningKey
from protocols.errors import NotFound, Unavailable
from protocols.pki import (
    CLAIM_LIFETIME,
    RETRY_CAP,
    RETRY_FIRST,
    RETRY_JITTER,
    SYNC_INTERVAL,
    Claim,
    SyncHealth,
)
from simulations.swarm import LocalNetwork, new_node


class UnreachableHost:
    """A libp2p host that reaches no one, as when the PKI node is down or restarting."""

    def __init__(self) -> None:
        self.dials = 0

    async def open_stream(self, peer_id: str, addrs: Sequence[str], protocol: str) -> Any:
        self.dials += 1
        await trio.lowlevel.checkpoint()
        raise Unavailable(f"node {peer_id} did not answer {protocol}")

    def is_connected(self, peer_id: str) -> bool:
        return False


class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


async def until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 (polls state that no event signals)
        await trio.sleep(0.5)


def append_claim(root: NodeService, name: str) -> None:
    assert root.pki is not None
    expiry = int(time.time()) + CLAIM_LIFETIME // 2
    root.pki.append(Claim.create(SigningKey.generate(), name, root.settings.node_id, expiry))


def swarm_of(tmp_path: Path) -> tuple[LocalNetwork, NodeService, NodeService]:
    root = new_node(Store(tmp_path / "root"))
    mirror = new_node(Store(tmp_path / "mirror"), pki_node=root.settings.node_id)
    swarm = LocalNetwork()
    swarm.add(root)
    swarm.add(mirror)
    start = time.time()  # the mirror dates the entries it checks: a clock near the real one
    mirror.clock = lambda: start + trio.current_time()
    return swarm, root, mirror


async def test_a_failed_pull_does_not_reenter_the_sync(tmp_path: Path) -> None:
    """The real network refreshes routes by a sync when a dial fails; when the failed dial is
    the sync's own call to the PKI node, that must not take the sync's lock again."""
    _, _, mirror = swarm_of(tmp_path)
    host = UnreachableHost()
    network = Libp2pNetwork(cast("Host", host), lambda peer: ["/ip4/127.0.0.1/tcp/9"])
    network._refresh = mirror.sync_pki
    mirror.network = network
    with trio.fail_after(10):
        with pytest.raises(Unavailable):
            await mirror.sync_pki()
        # The same through the on-demand paths: an answer from the local copy, no crash.
        assert (await mirror.call("node.info", {}))["pki_role"] == "mirror"
        assert mirror.home_of_username("alice") is None
        with pytest.raises(Exception, match="unknown user"):
            await mirror.call("pki.lookup", {"username": "alice"})
    assert host.dials >= 2
    assert mirror.pki_health.reachable is False
    assert mirror.pki_health.failures >= 1


async def test_a_call_to_a_dead_pki_node_is_unavailable(tmp_path: Path) -> None:
    """Any call to the PKI node (say, a read of a user homed there) whose dial fails pulls the
    PKI, which calls the same node: that must fail as unavailable, not re-enter the dial."""
    _, root, mirror = swarm_of(tmp_path)
    network = Libp2pNetwork(cast("Host", UnreachableHost()), lambda peer: ["/ip4/127.0.0.1/tcp/9"])
    network._refresh = mirror.sync_pki
    mirror.network = network
    with trio.fail_after(10), pytest.raises(Unavailable):
        await network.call(root.settings.node_id, "node.info", {})


async def test_a_mirror_outlives_its_pki_node_and_catches_up(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    swarm, root, mirror = swarm_of(tmp_path)
    append_claim(root, "alice")
    root_id = root.settings.node_id
    # Virtual seconds, and generous: while a pull waits on its worker thread, the clock jumps
    # from one poll of this test to the next.
    with trio.fail_after(10**6):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow_pki, mirror, FixedRandom(1.0))
            await until(lambda: mirror.pki_health.next_retry is not None)
            assert mirror.home_of_username("alice") == root_id
            assert mirror.pki_health.reachable is True
            assert mirror.pki_health.next_retry == pytest.approx(
                mirror.pki_health.last_success + SYNC_INTERVAL  # type: ignore[operator]
            )

            swarm.down.add(root_id)
            delays = []
            while mirror.pki_health.failures < 8:
                failures = mirror.pki_health.failures
                await trio.sleep(0.25)
                health = mirror.pki_health
                if health.failures != failures:
                    assert health.next_retry is not None
                    assert health.last_error_time is not None
                    delays.append(health.next_retry - health.last_error_time)
                # Meanwhile the mirror serves what it holds, and says where it stands.
                claim = await mirror.call("pki.lookup", {"username": "alice"})
                assert claim["home"] == root_id
            # Doubling from RETRY_FIRST, capped, shortened by the jitter the rng drew.
            expected = [min(RETRY_CAP, RETRY_FIRST * 2**n) * (1 - RETRY_JITTER) for n in range(8)]
            assert delays[-4:] == pytest.approx(expected[-4:])
            status = await mirror.call("pki.status", {})
            health_cbor = status["pki_node_health"]
            assert health_cbor["reachable"] is False
            assert health_cbor["failures"] >= 8
            assert "cannot be reached" in health_cbor["last_error"]
            assert health_cbor["last_success"] is not None
            assert health_cbor["next_retry"] >= health_cbor["last_error_time"]

            # The PKI node returns, with a user signed up meanwhile: the next scheduled pull,
            # at most RETRY_CAP away, catches up; no pull after the return fails.
            scheduled = mirror.pki_health.next_retry
            assert scheduled is not None
            assert scheduled - mirror.clock() <= RETRY_CAP
            swarm.down.discard(root_id)
            append_claim(root, "bob")
            failures = mirror.pki_health.failures
            while mirror.home_of_username("bob") is None or mirror.pki_health.failures:
                assert mirror.pki_health.failures in (0, failures)
                await trio.sleep(0.5)
            assert mirror.pki_health.reachable is True
            nursery.cancel_scope.cancel()


class BrokenNetwork:
    """A network whose calls fail with an error no rule expects (a fault in the node)."""

    def __init__(self) -> None:
        self.calls = 0

    async def call(self, node_id: str, method: str, args: dict[str, Any]) -> Any:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        raise RuntimeError("attempt to re-acquire an already held Lock")

    async def fetch_block(self, node_id: str, cid: Any, auth: Any) -> bytes:
        raise AssertionError("not used")


async def test_no_fault_of_a_pull_ends_the_follower(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    _, _, mirror = swarm_of(tmp_path)
    network = BrokenNetwork()
    mirror.network = network
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow_pki, mirror, FixedRandom(0.0))
            await until(lambda: network.calls >= 5)
            nursery.cancel_scope.cancel()
    assert mirror.pki_health.reachable is False
    assert mirror.pki_health.last_error == "internal error (see the node's log)"


def test_the_backoff_doubles_up_to_its_cap_with_bounded_jitter() -> None:
    health = SyncHealth()
    assert health.reachable is None
    assert health.delay(0.7) == SYNC_INTERVAL
    seen = []
    for n in range(40):
        health.failed(float(n), "down")
        seen.append((health.delay(0.0), health.delay(1.0), health.delay(0.5)))
    for n, (longest, shortest, middle) in enumerate(seen):
        full = min(RETRY_CAP, RETRY_FIRST * 2**n)
        assert longest == full
        assert shortest == full * (1 - RETRY_JITTER)
        assert shortest < middle < longest
    health.succeeded(41.0)
    assert health.reachable is True
    assert health.delay(0.3) == SYNC_INTERVAL


async def test_lookups_while_the_pki_node_is_away_do_not_hammer_it(tmp_path: Path) -> None:
    swarm, root, mirror = swarm_of(tmp_path)
    now = [float(int(time.time()))]
    mirror.clock = lambda: now[0]
    assert mirror.network is not None
    pulls = []
    call = mirror.network.call

    async def counted(node_id: str, method: str, args: dict[str, Any]) -> Any:
        pulls.append(now[0])
        return await call(node_id, method, args)

    mirror.network.call = counted  # type: ignore[method-assign]
    swarm.down.add(root.settings.node_id)
    with trio.fail_after(30):
        for n in range(40):  # strangers asking for names no one has, 0.1 s apart
            with pytest.raises(NotFound):
                await mirror.call("pki.lookup", {"username": f"nobody-{n}"})
            now[0] += 0.1
    assert 1 <= len(pulls) <= 0.1 * 40 / RETRY_FIRST + 1
    assert all(b - a >= RETRY_FIRST for a, b in itertools.pairwise(pulls))
    # Once it is back, the first lookup after the pause catches up.
    swarm.down.discard(root.settings.node_id)
    append_claim(root, "carol")
    now[0] += RETRY_FIRST
    with trio.fail_after(30):
        claim = await mirror.call("pki.lookup", {"username": "carol"})
    assert claim["home"] == root.settings.node_id
    assert mirror.pki_health.reachable is True
