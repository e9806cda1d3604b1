"""Running a node: open its home, serve the API, collect garbage on a schedule, stop cleanly."""

from __future__ import annotations

import gc
import itertools
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any

import trio

from node import heap
from node.home import NodeHome, Ready, parse_host_port
from node.net import serve_api
from node.server import NodeService, NodeSettings, PkiLog, collect_garbage
from node.store import Store
from protocols import crypto
from protocols.crypto import SigningKey
from protocols.errors import PyrgosError
from protocols.pki import NodeRecord

log = logging.getLogger(__name__)
# Seconds: bounds what LevelDB's read mmaps add to the node's RSS. Compactions read table files
# fast while a big upload runs, so a longer interval lets more pages pile up in between (at
# 0.05 s, up to 25 MiB; at 0.025, 13).
MAPPED_PAGES_INTERVAL = 0.025
# Table pages left resident between two page-outs: the scan is skipped until reads have
# touched more than this, so an idle node does not read its mappings 40 times a second.
MAPPED_KEEP = 4 * 1024 * 1024
GC_EVERY_TICKS = 100  # a full collection every 2.5 s
FIRST_PUBLISH_TIMEOUT = 5.0  # seconds a starting node waits for its node record to be taken


async def _collect_periodically(service: NodeService, interval: int) -> None:
    while True:
        await trio.sleep(interval)
        try:
            stats = await service.collect_garbage()
            log.info("scheduled garbage collection: %s", stats)
        except PyrgosError as exc:  # a full disk, say: one line, not a traceback each time
            log.warning("scheduled garbage collection failed: %s", exc.message)
        except Exception:
            log.exception("scheduled garbage collection failed")


async def _keep_memory_flat(store: Store) -> None:
    """Page out what LevelDB's read mmaps touched, give back the heap's free pages, and free
    cyclic garbage, continually."""
    for tick in itertools.count():
        await trio.sleep(MAPPED_PAGES_INTERVAL)
        store.release_mapped_pages(MAPPED_KEEP)
        # Blocks are reused from the heap; what a burst left beyond NODE_KEEP_FREE goes back.
        heap.release_free_pages(heap.NODE_KEEP_FREE)
        if tick % GC_EVERY_TICKS == 0:
            gc.collect()  # request cycles would otherwise hold bodies until a rare full pass


async def _stop_on_signals(cancel: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("stopping on %s", signal.Signals(signum).name)
            cancel.cancel()
            return


def _node_key(home: NodeHome) -> SigningKey:
    """The node's Ed25519 key as the PKI signs with it (libp2p keeps the same 32-byte seed)."""
    from libp2p.identity_utils import load_identity

    seed = load_identity(home.key_file).private_key.to_bytes()[:32]
    return SigningKey.from_seed(seed)


async def _publish_addresses(
    service: NodeService,
    key: SigningKey,
    addrs: list[str],
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,  # trio.TaskStatus[None]
) -> None:
    """Put this node's addresses in the PKI (a node record), retrying until the PKI node
    answers: other nodes find this one by them, and the PKI node takes claims only for
    homes it knows. Started once the first try ended (or FIRST_PUBLISH_TIMEOUT passed), so a
    node whose PKI node answers is known there before its first signup."""
    plain = [addr.split("/p2p/")[0] for addr in addrs]
    delay, first = 1.0, True
    while True:
        # Numbered after the last record the PKI holds, even if the clock stepped back.
        last = None if service.pki is None else service.pki.node_record(service.settings.node_id)
        seq = max(int(service.clock()), 0 if last is None else last.seq + 1)
        published = False
        with trio.move_on_after(FIRST_PUBLISH_TIMEOUT if first else float("inf")):
            try:
                await service.publish(NodeRecord.create(key, plain, seq))
                published = True
            except PyrgosError as exc:
                log.warning("could not publish this node's addresses yet: %s", exc.message)
            except Exception:
                log.exception("could not publish this node's addresses yet")  # never fatal
        if first:
            task_status.started()
            first = False
        if published:
            return
        await trio.sleep(delay)
        delay = min(delay * 2, 60)


async def follow_pki(service: NodeService, rng: random.Random | None = None) -> None:
    """A mirror pulls new PKI entries continually (and on demand, when a lookup misses).

    Nothing a pull meets ends this loop or the node: while the PKI node is away the mirror
    serves from its copy and retries with a capped, jittered backoff (`rng`), and
    `pki status` says so. The delays run on trio's clock, so tests run them in virtual time.
    """
    rng = rng or random.Random()
    while True:
        await service.pull_pki()
        delay = service.pki_health.delay(rng.random())
        service.pki_health.next_retry = service.clock() + delay
        await trio.sleep(delay)


async def run_node(home: NodeHome, on_ready: Callable[[str, str], None]) -> None:
    """Serve until SIGINT/SIGTERM; `on_ready(node_id, api_url)` once listening."""
    crypto.require_system_randomness()  # a node's keys and tokens never come from a seed
    from multiaddr import Multiaddr

    from node.net import Libp2pNetwork, open_host, serve_node

    config = home.config()
    node_id = home.node_id()
    key = _node_key(home)
    host, port = parse_host_port(config.api)
    pki_node = config.pki.rsplit("/p2p/", 1)[1] if config.pki else node_id
    store = Store(home.db_path)
    try:
        pki = PkiLog(store, pki_node, None if config.pki else key)
        async with open_host(home.key_file, [Multiaddr(config.listen)]) as p2p:
            service = NodeService(
                store,
                NodeSettings(
                    node_id=node_id,
                    test_mode=config.test_mode,
                    default_quota=config.quota,
                    admin_token=home.admin_token(),
                    addrs=tuple(p2p.addrs),
                    max_daily_signups=config.max_daily_signups,
                    max_source_signups=config.max_source_signups,
                    signup_token=home.signup_token(),
                ),
                pki=pki,
            )

            def addresses(peer: str) -> list[str]:
                if peer == pki_node and config.pki:
                    return [config.pki]
                return service.addresses_of(peer)

            network = Libp2pNetwork(p2p, addresses, refresh=service.sync_pki)
            service.network = network
            serve_node(p2p, service)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
                url = await nursery.start(serve_api, service, host, port)
                written = home.api_file.with_name("api.tmp")  # never half a URL for clients
                written.write_text(url + "\n")
                written.replace(home.api_file)
                try:
                    # The store is closed below, in this thread, only once this task has
                    # ended: a table mapping it advises cannot be unmapped by closing.
                    nursery.start_soon(_keep_memory_flat, store)
                    await nursery.start(_publish_addresses, service, key, p2p.addrs)
                    if config.pki:
                        nursery.start_soon(follow_pki, service)
                    nursery.start_soon(service.mirrors.run)  # the users it mirrors, if any
                    if config.gc_interval > 0:
                        nursery.start_soon(_collect_periodically, service, config.gc_interval)
                    # What starting made (the host, the app, lazily imported modules) lives
                    # as long as the node: out of the periodic collections' way.
                    gc.freeze()
                    home.write_ready(Ready(node_id, url, tuple(p2p.addrs), os.getpid()))
                    on_ready(node_id, url)
                    await trio.sleep_forever()
                finally:
                    home.ready_file.unlink(missing_ok=True)
                    home.api_file.unlink(missing_ok=True)
                    with trio.CancelScope(shield=True):
                        await network.aclose()
    finally:
        store.close()


def collect_offline(home: NodeHome) -> dict[str, int]:
    """Garbage-collect a node that is not running."""
    store = Store(home.db_path)
    try:
        return collect_garbage(store, int(time.time()))
    finally:
        store.close()
