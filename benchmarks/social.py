"""Social benchmarks: sharing and revoking a folder, a follow request's round trip, a secret
link's first byte, and a friend's large folder listed through another node.

Two real node processes (a PKI node and a node that follows its PKI), users homed on each,
every figure a whole CLI command as a user types it. Run by `make bench` (or alone:
`benchmarks/run.py --social-only`).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from network import cli
from run import PASSWORD, RUNS, Node, Row, small_files

SHARED_FILES = 1000  # the folder shared and revoked
OTHER_FILES = 2000  # the rest of the owner's space: a revocation must not touch it
LISTED = 10_000  # entries of the folder listed through another node


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def median_of(run: Callable[[], object], runs: int = RUNS) -> float:
    return statistics.median(timed(run) for _ in range(runs))


def stored_blocks(node: Node) -> int:
    info = json.loads(cli(node.env, "node", "info", "--json"))
    return int(info.get("stats", {}).get("blocks_stored", 0))


def run_social(work: Path) -> list[Row]:
    work.mkdir(parents=True, exist_ok=True)
    nodes: list[Node] = []
    try:
        n1 = Node(work, test_mode=True, name="n1")
        nodes.append(n1)
        n2 = Node(work, test_mode=True, name="n2", init=("--pki", n1.addr()))
        nodes.append(n2)

        def user(name: str, node: Node) -> dict[str, str]:
            env = dict(
                node.env,
                PYRGOS_PROFILE=str(work / f"profile-{name}"),
                PYRGOS_PASSWORD=PASSWORD,
                PYRGOS_NODE=node.url,
                PYRGOS_INSECURE_TEST_KDF="1",
            )
            cli(env, "signup", name)
            return env

        alice, bob = user("alice", n1), user("bob", n2)
        photos, other, big = work / "photos", work / "other", work / "big"
        small_files(photos, SHARED_FILES)
        small_files(other, OTHER_FILES)
        big.mkdir()
        for i in range(LISTED):
            (big / f"e{i:05}").write_bytes(b"x")
        upload = timed(lambda: cli(alice, "put", str(photos), "photos"))
        cli(alice, "put", str(other), "other")
        cli(alice, "put", str(big), "big")

        # A follow request's round trip across the two nodes: bob asks, alice sees it and
        # accepts, bob sees the answer. Reference: the same number of `whoami` commands.
        follow = timed(
            lambda: (
                cli(bob, "follow", "alice"),
                cli(alice, "requests"),
                cli(alice, "accept", "bob"),
                cli(bob, "requests"),
            )
        )
        whoami = median_of(lambda: cli(bob, "whoami")) * 4

        share = timed(lambda: cli(alice, "share", "photos", "bob"))
        cli(alice, "share", "big", "bob")
        after_share = stored_blocks(n1)
        revoke = timed(lambda: cli(alice, "unshare", "photos", "bob"))
        rewritten = stored_blocks(n1) - after_share
        space = SHARED_FILES + OTHER_FILES + LISTED

        link = cli(alice, "link", "create", "other/f00000.txt").strip().splitlines()[-1]
        first_byte = median_of(lambda: cli(bob, "cat-link", link))
        cat_home = median_of(lambda: cli(alice, "cat", "other/f00000.txt"))

        ls_home = median_of(lambda: cli(alice, "ls", "big"))
        ls_friend = median_of(lambda: cli(bob, "ls", "/alice/big"))
    finally:
        for node in reversed(nodes):
            node.stop()
    return [
        Row(f"share a folder of {SHARED_FILES:,} files (CLI)", share, "s",
            f"its upload {upload:.2f} s", share / upload, "", None),
        Row("revoke it: key rotation (CLI)", revoke, "s",
            f"its upload {upload:.2f} s", revoke / upload, "", None),
        # Each 4 KiB file is a node and a fragment (padded to 8 KiB), plus the CHAMP nodes on
        # their paths: O(the subtree), whatever the size of the rest of the space.
        Row("  blocks rewritten by the revocation", rewritten, "blocks",
            f"user's space {space:,} files", rewritten / space,
            "<= 3 per file of the subtree", rewritten <= 3 * SHARED_FILES),
        Row("follow round trip, 2 nodes (4 CLI cmds)", follow, "s",
            f"4 x whoami {whoami:.2f} s", follow / whoami, "", None),
        Row("secret link, time to content (cat-link)", first_byte, "s",
            f"cat by the owner {cat_home:.2f} s", first_byte / cat_home, "", None),
        Row(f"ls of a friend's {LISTED:,} entries, other node", ls_friend, "s",
            f"the same ls at home {ls_home:.2f} s", ls_friend / ls_home, "<= 2.00 x at home",
            ls_friend <= 2 * ls_home),
    ]  # fmt: skip
