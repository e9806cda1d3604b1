"""Social file sharing end to end: three real nodes, three users homed apart, the real CLI.

alice is homed on node 2, bob on node 3, carol on node 1 (the PKI root); each works through
their own home, so everything between them crosses nodes over libp2p. The scenario follows,
shares read-only and writable, revokes by key rotation, hands out a secret link to a device
with no account, and tries the bad input of each step. Then the nodes stop and their stores
and logs are searched for what they must never hold: names, capability keys, the link
password, who follows whom.

Names are long and distinctive, so a match in random bytes is impossible: any hit is a leak.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio

from node.client import FileSystem, NodeApi, Profile, Route, Session, links, reopen
from node.client._blocks import Blocks
from node.client._fs import _Found
from node.client._resolve import Resolved
from node.client._trees import WriterTree
from node.store import Space, Store
from protocols import cbor
from protocols.cid import CID
from protocols.cryptree import Capability
from protocols.errors import Denied, MalformedInput, NotFound
from protocols.links import derive as derive_link_keys
from protocols.social import FOLLOW_SEALED_BYTES
from tests.e2e.conftest import Cli, Cluster, NodeProcess, Result

pytestmark = pytest.mark.e2e

# Users of three name lengths: their follow requests must still seal to one length.
ALICE: Final = "alice-k7wq2"
BOB: Final = "bob-x9fz4"
CAROL: Final = "carol-m3jv8qd"
# Names and contents that appear only in plaintext on clients.
ALBUM: Final = "wq-holiday-album-7q3k"  # shared read-only with bob and carol
PHOTO: Final = "wq-beach-sunset-3j8d.txt"
DROPBOX: Final = "wq-dropbox-inbound-5m2x"  # shared writable with bob
BOB_FILE: Final = "wq-bob-upload-6t4r.txt"
CONTRACT: Final = "wq-linked-contract-2h7n.txt"  # behind secret links
PHOTO_V1: Final = b"wq-content-first-version-of-the-photo-r8d2\n"
PHOTO_V2: Final = b"wq-content-second-version-after-revocation-k4m9\n"
BOB_DATA: Final = b"wq-content-written-by-bob-through-node-3-z6p1\n"
CONTRACT_DATA: Final = b"wq-content-of-the-contract-behind-a-link-h3x5\n"
LINK_PASSWORD: Final = "wq-LinkPass-83kd-Zeta-Omega"
WRONG_PASSWORD: Final = "wq-not-the-link-password-11"
MAX_USES: Final = 2
# `link create --expires` counts in minutes at least: the short-lived link is made through
# the client library, dated back so that it expires SHORT_LIFE seconds after it is made.
SHORT_LIFE: Final = 10  # long enough for one use on a slow machine; it runs alongside others
EXPIRY_MARGIN: Final = 1.0  # seconds: the node's clock against this one
MAX_CAPS_FILE: Final = 1 << 20


@dataclass
class Users:
    """The three users' devices (each on their home node) and a device with no account."""

    alice: Cli
    bob: Cli
    carol: Cli
    anyone: Cli
    profiles: dict[str, Path]


@dataclass
class Secrets:
    """What the nodes must never see, gathered from the clients during the scenario."""

    keys: dict[str, bytes] = field(default_factory=dict)  # what -> key bytes

    def add_cap(self, what: str, cap: Capability) -> None:
        self.keys[f"{what} read key"] = cap.read_key
        if cap.write_key is not None:
            self.keys[f"{what} write key"] = cap.write_key


def ok(cluster: Cluster, cli: Cli, *argv: str | Path, stdin: bytes | None = None) -> Result:
    result = cli.run(*argv, stdin=stdin)
    assert result.code == 0, f"{result}\n{cluster.logs()}"
    assert "Traceback" not in result.stderr, f"{result}\n{cluster.logs()}"
    return result


def fails(cli: Cli, *argv: str | Path, code: int) -> str:
    """A command that must fail with exit status `code` and one line on stderr."""
    return cli.fails(*argv, code=code)


# -- client-side checks, in this process, from the profiles the CLI saved --------------------


async def _session(api: NodeApi, profile: Path) -> Session:
    saved = Profile(profile).load()
    return await reopen(api, saved.username, saved.data, saved.token, saved.expiry)


@asynccontextmanager
async def _sessions(users: Users) -> AsyncIterator[tuple[Session, Session]]:
    """alice's and bob's sessions as their devices saved them, each through their own node."""
    async with (
        NodeApi(users.alice.env["PYRGOS_NODE"]) as alice_api,
        NodeApi(users.bob.env["PYRGOS_NODE"]) as bob_api,
    ):
        yield (
            await _session(alice_api, users.profiles[ALICE]),
            await _session(bob_api, users.profiles[BOB]),
        )


def _caps_in(value: object) -> Iterator[Capability]:
    """Every capability in a decoded CBOR value (a caps file)."""
    if isinstance(value, dict):
        try:
            yield Capability.from_cbor(value)
            return
        except MalformedInput:
            pass
        for item in value.values():
            yield from _caps_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from _caps_in(item)


async def _walk(fs: FileSystem, cap: Capability, route: Route, names: list[str]) -> Capability:
    found: _Found = await fs._walk_from(Resolved(cap, route, names))
    return found.cap


@dataclass
class OldCaps:
    """What bob held for the album before it was unshared: its capability and its photo's."""

    album: Capability
    photo: Capability
    route: Route


async def bobs_caps_before_unshare(users: Users, secrets: Secrets) -> OldCaps:
    """bob's capability of the album, as alice's caps file for him names it, and that of the
    photo in it, walked by bob; bob can read with them now."""
    async with _sessions(users) as (alice, bob):
        alice_fs = FileSystem(alice)
        album = await alice_fs.capability(f"/{ALICE}/{ALBUM}")
        raw = await alice_fs.read_bytes(f"/{ALICE}/shared/{BOB}/caps", MAX_CAPS_FILE)
        shared = [cap for cap in _caps_in(cbor.decode(raw)) if cap.label == album.label]
        assert shared, "alice's caps file for bob names no capability of the album"
        old_album = shared[0]
        assert not old_album.writable
        route = alice.route
        bob_fs = FileSystem(bob)
        old_photo = await _walk(bob_fs, old_album, route, [PHOTO])
        assert await bob_fs.read_capability(old_photo, route, 1 << 16) == PHOTO_V1
        secrets.add_cap("bob's old album", old_album)
        secrets.add_cap("bob's old photo", old_photo)
        return OldCaps(old_album, old_photo, route)


async def revoked_reader_finds_nothing(users: Users, old: OldCaps, secrets: Secrets) -> None:
    """After the unshare and a new version: bob's old capabilities find nothing, and the new
    blocks refuse his old BATs, asked through his own node; alice reads them."""
    async with _sessions(users) as (alice, bob):
        alice_fs, bob_fs = FileSystem(alice), FileSystem(bob)
        album = await alice_fs.capability(f"/{ALICE}/{ALBUM}")
        photo = await alice_fs.capability(f"/{ALICE}/{ALBUM}/{PHOTO}")
        secrets.add_cap("alice's album after rotation", album)
        secrets.add_cap("alice's new photo", photo)
        assert album.label != old.album.label
        assert album.read_key != old.album.read_key
        assert album.bat != old.album.bat
        with pytest.raises((NotFound, Denied)):
            await bob_fs.contents_of(old.album, old.route)
        with pytest.raises((NotFound, Denied)):
            await bob_fs.read_capability(old.photo, old.route, 1 << 16)
        # The new photo node, found by alice in her writer's CHAMP ...
        blocks = Blocks(alice.api, old.route)
        tree = (await WriterTree(photo.writer, old.route).read(blocks)).data.tree
        found = await blocks.lookup(tree, [photo.label, old.photo.label, old.album.label])
        assert found[old.photo.label] is None  # the old nodes are gone
        assert found[old.album.label] is None
        cid = found[photo.label]
        assert isinstance(cid, CID)
        # ... is refused to bob with any BAT he ever held, through his node (NotFound: a
        # node answers a wrong BAT as it answers a missing block, docs/protocol.md) ...
        for bat in (old.photo.bat, old.album.bat):
            with pytest.raises((NotFound, Denied)):
                await bob.api.get_block(cid, bat, route=old.route)
        # ... while the new BAT, which only those who keep access hold, opens it through the
        # same node: the refusal is the BAT's. Then bob's node has it cached, and refuses
        # the old BATs as the home does.
        assert cid.matches(await bob.api.get_block(cid, photo.bat, route=old.route))
        for bat in (old.photo.bat, old.album.bat):
            with pytest.raises((NotFound, Denied)):
                await bob.api.get_block(cid, bat, route=old.route)


async def client_secrets(users: Users, secrets: Secrets) -> None:
    """The keys each user's device holds: login secrets, home, every item of the scenario,
    and every capability in alice's caps files."""
    async with NodeApi(users.alice.env["PYRGOS_NODE"]) as api:
        alice = await _session(api, users.profiles[ALICE])
        fs = FileSystem(alice)
        for path in (ALBUM, f"{ALBUM}/{PHOTO}", DROPBOX, f"{DROPBOX}/{BOB_FILE}", CONTRACT):
            secrets.add_cap(f"alice's {path}", await fs.capability(f"/{ALICE}/{path}"))
        for follower in (BOB, CAROL):
            raw = await fs.read_bytes(f"/{ALICE}/shared/{follower}/caps", MAX_CAPS_FILE)
            for n, cap in enumerate(_caps_in(cbor.decode(raw))):
                secrets.add_cap(f"cap {n} shared with {follower}", cap)
    for user, profile in users.profiles.items():
        data = Profile(profile).load().data
        secrets.add_cap(f"{user}'s home", data.home)
        secrets.keys[f"{user}'s identity seed"] = data.identity.seed
        secrets.keys[f"{user}'s boxing seed"] = data.boxing.seed


async def short_lived_link(users: Users, node_url: str) -> str:
    """A link to the contract, made by alice's device, that expires SHORT_LIFE seconds from
    now: its creation is dated back, as a clock a minute behind would date it."""
    async with NodeApi(users.alice.env["PYRGOS_NODE"]) as api:
        alice = await _session(api, users.profiles[ALICE])
        lifetime = 60  # seconds: the shortest that `link create --expires 1m` makes
        made = int(time.time() * 1000) - (lifetime - SHORT_LIFE) * 1000
        return await links.create_link(
            FileSystem(alice),
            f"/{ALICE}/{CONTRACT}",
            node_url=node_url,
            expires=lifetime,
            clock=lambda: made,
            test_kdf=True,
        )


def link_secrets(url: str, password: str | None, secrets: Secrets, what: str) -> None:
    """The link's key (as text and as bytes) and what it derives: the key sealing the
    capability, and the proof the reader shows the home (which keeps only its hash)."""
    key_text = urlsplit(url).fragment
    keys = derive_link_keys(_unbase64(key_text), password, test_kdf=True)
    secrets.keys[f"{what}'s key (text)"] = key_text.encode()
    secrets.keys[f"{what}'s key"] = _unbase64(key_text)
    secrets.keys[f"{what}'s capability key"] = keys.cap_key
    secrets.keys[f"{what}'s proof"] = keys.proof


# -- the privacy scan, nodes stopped ------------------------------------------------------


def _files(node: NodeProcess) -> Iterator[tuple[str, bytes]]:
    """Every file of the node's home (its LevelDB's tables, logs, manifest, its settings),
    and its process log."""
    for path in sorted(node.home.rglob("*")):
        if path.is_file():
            yield str(path), path.read_bytes()
    yield str(node.log), node.log.read_bytes()


def _records(node: NodeProcess) -> Iterator[tuple[Space, bytes, bytes]]:
    store = Store(node.home / "db")
    try:
        for space in Space:
            for key, value in store.items(space):
                yield space, key, value
    finally:
        store.close()


def scan_for_leaks(cluster: Cluster, secrets: Secrets, homes: dict[str, int]) -> None:
    """No node holds a name, a content, a key or the link password, in any file (live data
    and what LevelDB still keeps of old data) nor its log; usernames appear only in the PKI
    (and a user's own account record, at their own home)."""
    plain: dict[str, bytes] = {
        name: name.encode()
        for name in (ALBUM, PHOTO, DROPBOX, BOB_FILE, CONTRACT, LINK_PASSWORD, WRONG_PASSWORD)
    }
    for content in (PHOTO_V1, PHOTO_V2, BOB_DATA, CONTRACT_DATA):
        plain[f"content {content!r}"] = content.strip()
    needles = {**plain, **secrets.keys}
    assert len(secrets.keys) > 30, sorted(secrets.keys)
    leaks = []
    for number, node in enumerate(cluster.nodes, 1):
        on_disk = b""
        for path, data in _files(node):
            leaks += [f"{what} in {path}" for what, needle in needles.items() if needle in data]
            on_disk += data
        # The control: the scan sees what is there (the PKI names every user, on every node).
        assert all(user.encode() in on_disk for user in (ALICE, BOB, CAROL)), number
        in_pki = b"".join(key + value for space, key, value in _records(node) if space is Space.PKI)
        assert all(user.encode() in in_pki for user in (ALICE, BOB, CAROL)), number
        log = node.log.read_bytes()
        for user in (ALICE, BOB, CAROL):
            if user.encode() in log:
                leaks.append(f"username {user} in the log of node {number}")
        for space, key, value in _records(node):
            for what, needle in needles.items():
                if needle in key or needle in value:
                    leaks.append(f"{what} in {space.name} of node {number}")
            if space is Space.PKI:
                continue  # the PKI legitimately names every user
            for user in (ALICE, BOB, CAROL):
                name = user.encode()
                own_account = space is Space.ACCOUNTS and key == name and homes[user] == number
                if (name in key or name in value) and not own_account:
                    leaks.append(f"username {user} in {space.name} of node {number}")
    assert not leaks, "\n".join(leaks)


def inbox_lengths(cluster: Cluster) -> dict[int, list[int]]:
    """The stored follow requests' lengths, by node."""
    found: dict[int, list[int]] = {}
    for number, node in enumerate(cluster.nodes, 1):
        for space, _, value in _records(node):
            if space is Space.INBOX:
                found.setdefault(number, []).append(len(value))
    return found


# -- the scenario ---------------------------------------------------------------------------


def _unbase64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def tampered(url: str, part: str) -> str:
    """The link URL with one character of its label ("label") or key ("key") changed."""
    pieces = urlsplit(url)
    if part == "key":
        key = pieces.fragment
        changed = key[:5] + ("A" if key[5] != "A" else "B") + key[6:]
        return urlunsplit(pieces._replace(fragment=changed))
    path = pieces.path
    changed_path = path[:-3] + ("A" if path[-3] != "A" else "B") + path[-2:]
    return urlunsplit(pieces._replace(path=changed_path))


def test_follow_share_revoke_link_and_nothing_leaks(cluster: Cluster, tmp_path: Path) -> None:
    node1, node2, node3 = cluster.nodes
    profiles = {user: cluster.root / f"{user}-profile" for user in (ALICE, BOB, CAROL)}
    users = Users(
        alice=cluster.device(node2, f"{ALICE}-profile"),
        bob=cluster.device(node3, f"{BOB}-profile"),
        carol=cluster.device(node1, f"{CAROL}-profile"),
        anyone=cluster.device(node3, "no-account"),
        profiles=profiles,
    )
    alice, bob, carol, anyone = users.alice, users.bob, users.carol, users.anyone
    homes = {ALICE: 2, BOB: 3, CAROL: 1}
    for cli, user in ((alice, ALICE), (bob, BOB), (carol, CAROL)):
        ok(cluster, cli, "signup", user)
    cluster.wait_synced()
    # each is homed where they signed up: three users, three homes
    assert len({cluster.lookup(node1, user)[1] for user in homes}) == 3
    secrets = Secrets()

    # alice's files
    local = tmp_path / "local"
    local.mkdir()
    (local / "photo-v1").write_bytes(PHOTO_V1)
    (local / "photo-v2").write_bytes(PHOTO_V2)
    (local / "bob").write_bytes(BOB_DATA)
    (local / "contract").write_bytes(CONTRACT_DATA)
    ok(cluster, alice, "mkdir", ALBUM)
    ok(cluster, alice, "put", local / "photo-v1", f"{ALBUM}/{PHOTO}")
    ok(cluster, alice, "mkdir", DROPBOX)
    ok(cluster, alice, "put", local / "contract", CONTRACT)

    # bad input before anyone follows: each one line, nothing changed
    assert "unknown user" in fails(bob, "follow", "nobody-qq3z", code=4)
    assert "no follow request" in fails(alice, "accept", BOB, code=4)
    assert "follow" in fails(alice, "share", ALBUM, BOB, code=8)  # bob is no follower
    assert ok(cluster, alice, "shared").out == "nothing shared\n"
    assert ok(cluster, alice, "followers").out == ""
    assert ok(cluster, bob, "following").out == ""
    assert ok(cluster, alice, "requests").out == "no follow requests\n"

    # bob (node 3) and carol (node 1) ask to follow alice (node 2); she accepts both
    ok(cluster, bob, "follow", ALICE)
    ok(cluster, carol, "follow", ALICE)
    pending = ok(cluster, alice, "requests").lines
    assert sorted(line.split()[0] for line in pending) == sorted([BOB, CAROL])
    ok(cluster, alice, "accept", BOB)
    ok(cluster, alice, "accept", CAROL)
    assert [line.split()[0] for line in ok(cluster, alice, "followers").lines] == sorted(
        [BOB, CAROL]
    )
    for cli in (bob, carol):
        assert ok(cluster, cli, "requests").lines[0] == f"{ALICE} accepted: you now follow {ALICE}"
        assert ok(cluster, cli, "following").lines[0].startswith(f"{ALICE}  following")

    # read-only share: bob and carol read the album through their own nodes
    ok(cluster, alice, "share", ALBUM, BOB)
    ok(cluster, alice, "share", ALBUM, CAROL)
    for cli in (bob, carol):
        assert ok(cluster, cli, "cat", f"/{ALICE}/{ALBUM}/{PHOTO}").stdout == PHOTO_V1
    ok(cluster, bob, "get", f"/{ALICE}/{ALBUM}/{PHOTO}", tmp_path / "got-by-bob")
    assert (tmp_path / "got-by-bob").read_bytes() == PHOTO_V1
    assert ok(cluster, bob, "ls", f"/{ALICE}").lines == [f"{ALBUM}/"]
    # read-only: bob cannot write there
    fails(bob, "put", local / "bob", f"/{ALICE}/{ALBUM}/{BOB_FILE}", code=8)

    # writable share: bob writes into alice's folder, alice reads it
    ok(cluster, alice, "share", DROPBOX, BOB, "--write")
    ok(cluster, bob, "put", local / "bob", f"/{ALICE}/{DROPBOX}/{BOB_FILE}")
    assert ok(cluster, alice, "cat", f"{DROPBOX}/{BOB_FILE}").stdout == BOB_DATA
    fails(carol, "cat", f"/{ALICE}/{DROPBOX}/{BOB_FILE}", code=4)  # not shared with carol
    shared = ok(cluster, alice, "shared").out
    for name in (BOB, CAROL, ALBUM, DROPBOX):
        assert name in shared, shared

    # unshare the album for bob, then a new version: carol reads it, bob cannot
    old = trio.run(bobs_caps_before_unshare, users, secrets)
    ok(cluster, alice, "unshare", ALBUM, BOB)
    ok(cluster, alice, "put", local / "photo-v2", f"{ALBUM}/{PHOTO}")
    assert ok(cluster, carol, "cat", f"/{ALICE}/{ALBUM}/{PHOTO}").stdout == PHOTO_V2
    line = fails(bob, "cat", f"/{ALICE}/{ALBUM}/{PHOTO}", code=4)
    assert "not shared with you" in line
    fails(bob, "get", f"/{ALICE}/{ALBUM}/{PHOTO}", tmp_path / "revoked", code=4)
    assert not (tmp_path / "revoked").exists()
    assert ok(cluster, bob, "ls", f"/{ALICE}").lines == [f"{DROPBOX}/"]
    trio.run(revoked_reader_finds_nothing, users, old, secrets)
    # the writable share is untouched
    assert ok(cluster, bob, "cat", f"/{ALICE}/{DROPBOX}/{BOB_FILE}").stdout == BOB_DATA

    # a link that expires: it works now; SHORT_LIFE seconds later the home refuses it
    short_url = trio.run(short_lived_link, users, node3.url)
    expires_at = time.monotonic() + SHORT_LIFE + EXPIRY_MARGIN
    link_secrets(short_url, None, secrets, "the short link")
    assert ok(cluster, anyone, "cat-link", short_url).stdout == CONTRACT_DATA

    # a secret link: password, expiry, two uses; opened by a device with no account
    with_password = {"PYRGOS_LINK_PASSWORD": LINK_PASSWORD}
    made = ok(
        cluster,
        alice.with_env(**with_password),
        "link",
        "create",
        CONTRACT,
        "--password",
        "--expires",
        "1h",
        "--max-uses",
        str(MAX_USES),
        "--node",  # the reader goes through node 1: link.get is forwarded to alice's home
        node1.url,
    )
    (url,) = [word for word in made.out.split() if word.startswith("http")]
    assert "#" in url
    link_secrets(url, LINK_PASSWORD, secrets, "the link")
    listed = ok(cluster, alice, "link", "list").lines  # oldest first
    assert len(listed) == 2, listed
    assert all(f"  /{ALICE}/{CONTRACT}  " in line for line in listed), listed
    assert listed[0].endswith("  uses unlimited  read-only  no password"), listed
    assert listed[1].endswith(f"  uses {MAX_USES}  read-only  password"), listed
    wrong = anyone.with_env(PYRGOS_LINK_PASSWORD=WRONG_PASSWORD)
    right = anyone.with_env(**with_password)
    for _ in range(2):  # wrong passwords use none of the uses
        assert "password" in fails(wrong, "cat-link", url, code=3)
    fails(right, "cat-link", tampered(url, "key"), code=3)
    fails(right, "cat-link", tampered(url, "label"), code=4)
    fails(right, "cat-link", url.replace("#", "#%%"), code=1)  # the key is not base64url
    assert ok(cluster, right, "cat-link", url).stdout == CONTRACT_DATA
    ok(cluster, right, "get-link", url, tmp_path / "from-link")
    assert (tmp_path / "from-link").read_bytes() == CONTRACT_DATA
    assert f"{MAX_USES} times" in fails(right, "cat-link", url, code=8)
    assert not (tmp_path / "third").exists()
    fails(right, "get-link", url, tmp_path / "third", code=8)
    assert not (tmp_path / "third").exists()

    # ... and the short-lived one, once its time is up
    time.sleep(max(0.0, expires_at - time.monotonic()))
    assert "expired" in fails(anyone, "cat-link", short_url, code=8)
    assert "expired" in fails(anyone, "get-link", short_url, tmp_path / "expired", code=8)
    assert not (tmp_path / "expired").exists()

    # follow requests left waiting, from senders with names of three lengths: at the end
    # they are in the nodes' inboxes, to be measured
    ok(cluster, bob, "follow", CAROL)
    ok(cluster, alice, "follow", CAROL)
    ok(cluster, carol, "follow", BOB)
    ok(cluster, bob, "accept", CAROL)

    trio.run(client_secrets, users, secrets)
    for node in cluster.nodes:
        node.stop_cleanly()

    assert not (cluster.root / "no-account").exists()  # the link reader had no account
    lengths = inbox_lengths(cluster)
    assert lengths == {1: [FOLLOW_SEALED_BYTES] * 3}, lengths  # carol's inbox, on node 1
    scan_for_leaks(cluster, secrets, homes)
