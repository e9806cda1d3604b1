"""Running a node: open its home, serve the API, collect garbage on a schedule, stop cleanly."""

from __future__ import annotations

import gc
import itertools
import logging
import signal
import time
from collections.abc import Callable

import trio

from node.home import NodeHome, parse_host_port
from node.net import serve_api
from node.server import NodeService, NodeSettings, collect_garbage
from node.store import Store

log = logging.getLogger(__name__)
GC_EVERY_TICKS = 10
MAPPED_PAGES_INTERVAL = 0.25  # seconds: bounds what LevelDB's read mmaps add to the node's RSS


async def _collect_periodically(service: NodeService, interval: int) -> None:
    while True:
        await trio.sleep(interval)
        try:
            stats = await service.collect_garbage()
            log.info("scheduled garbage collection: %s", stats)
        except Exception:
            log.exception("scheduled garbage collection failed")


async def _keep_memory_flat(store: Store) -> None:
    """Page out what LevelDB's read mmaps touched, and free cyclic garbage, continually."""
    for tick in itertools.count():
        await trio.sleep(MAPPED_PAGES_INTERVAL)
        store.release_mapped_pages()
        if tick % GC_EVERY_TICKS == 0:
            gc.collect()  # request cycles would otherwise hold bodies until a rare full pass


async def _stop_on_signals(cancel: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("stopping on %s", signal.Signals(signum).name)
            cancel.cancel()
            return


async def run_node(home: NodeHome, on_ready: Callable[[str, str], None]) -> None:
    """Serve until SIGINT/SIGTERM; `on_ready(node_id, api_url)` once listening."""
    config = home.config()
    node_id = home.node_id()
    host, port = parse_host_port(config.api)
    store = Store(home.db_path)
    try:
        service = NodeService(
            store,
            NodeSettings(
                node_id=node_id,
                test_mode=config.test_mode,
                default_quota=config.quota,
                admin_token=home.admin_token(),
            ),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
            url = await nursery.start(serve_api, service, host, port)
            written = home.api_file.with_name("api.tmp")  # clients must never read half a URL
            written.write_text(url + "\n")
            written.replace(home.api_file)
            try:
                nursery.start_soon(_keep_memory_flat, store)
                if config.gc_interval > 0:
                    nursery.start_soon(_collect_periodically, service, config.gc_interval)
                on_ready(node_id, url)
                await trio.sleep_forever()
            finally:
                home.api_file.unlink(missing_ok=True)
    finally:
        store.close()


def collect_offline(home: NodeHome) -> dict[str, int]:
    """Garbage-collect a node that is not running."""
    store = Store(home.db_path)
    try:
        return collect_garbage(store, int(time.time()))
    finally:
        store.close()
