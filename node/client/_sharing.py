"""Sharing from a user's side (DESIGN §6, §10): what I share with each follower, revocation
by key rotation, and other users' paths (`/bob/x/y`) resolved from what they share with me.

What I share with a follower is the caps file `/<me>/shared/<them>/caps` (protocols/shares.py),
which they read through the read-only capability of that folder they got when I accepted them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from node.client import _links as links
from node.client._api import Route
from node.client._fs import UNREADABLE_ENTRY, FileSystem
from node.client._resolve import Listing, Resolved
from node.client._session import Session
from node.client._social import (
    SHARED_DIR,
    STATE_DIR,
    Clock,
    _changed_message,
    _claim,
    _trust,
    load_state,
)
from protocols.errors import (
    Conflict,
    Corrupted,
    Denied,
    MalformedInput,
    NotFound,
    PyrgosError,
    TooLarge,
)
from protocols.names import check_username, split_path
from protocols.shares import MAX_CAPS_BYTES, SharedItem, decode_caps, encode_caps, within
from protocols.social import Followee

CAPS_FILE: Final = "caps"


@dataclass(frozen=True)
class Shared:
    """`pyrgos shared`: (follower, item) I share, (followee, item) shared with me, and why
    some followee's shares could not be read."""

    mine: list[tuple[str, SharedItem]]
    with_me: list[tuple[str, SharedItem]]
    problems: list[str]


def _me(fs: FileSystem) -> str:
    return fs.require_session().username


def _caps_path(fs: FileSystem, username: str) -> str:
    return f"/{_me(fs)}/{SHARED_DIR}/{username}/{CAPS_FILE}"


def _own_path(fs: FileSystem, path: str) -> str:
    """`path` as `/<me>/names…`: Denied for another user's item, Conflict for the home and
    the folders that hold the social state (rotating them would cut followers off)."""
    me = _me(fs)
    names = split_path(path)
    if path.startswith("/"):
        if not names or names[0] != me:
            raise Denied("you can share only your own items (paths under /" + me + ")")
        names = names[1:]
    if not names:
        raise Conflict("the home directory itself cannot be shared: share a folder in it")
    if names[0] in (STATE_DIR, SHARED_DIR):
        raise Conflict(f"/{me}/{names[0]} holds your social state: it cannot be shared")
    return "/" + "/".join([me, *names])


async def _read_caps(fs: FileSystem, username: str) -> list[SharedItem]:
    """What I share with `username` (none when the file does not exist)."""
    path = _caps_path(fs, username)
    try:
        data = await fs.read_bytes(path, MAX_CAPS_BYTES)
        return decode_caps(data)
    except NotFound:
        return []
    except (TooLarge, MalformedInput) as exc:
        raise Corrupted(f"{path} is damaged: {exc.message}") from None


async def _write_caps(fs: FileSystem, username: str, items: list[SharedItem]) -> None:
    data = encode_caps(items)  # TooLarge before anything is written
    path = _caps_path(fs, username)
    try:
        await fs.write_bytes(path, data)
    except NotFound:  # the folder made at accept was removed since
        await fs.mkdir(path.rsplit("/", 1)[0], parents=True)
        await fs.write_bytes(path, data)


async def share(
    fs: FileSystem, path: str, username: str, *, write: bool = False, clock: Clock | None = None
) -> SharedItem:
    """Share my item at `path` with the follower `username`, read-only or writable.

    Only followers can be shared with (Denied otherwise, nothing changed), and only while
    their key is the one I trust. A writable share first makes the item its own sub-writer
    (a rotation, after which everyone else who shares it gets the new capability), so the
    follower can change that item and nothing above it. Sharing read-only what was shared
    writable with them takes the write access back: the item is rotated as by `unshare`.
    """
    clock = clock or fs.api.now_ms
    item_path = _own_path(fs, path)
    check_username(username)
    if username == _me(fs):
        raise Conflict("you cannot share with yourself")
    if username not in (await load_state(fs)).followers:
        raise Denied(
            f"{username} does not follow you: only followers can be shared with"
            f" (they run `pyrgos follow {_me(fs)}`, then you `pyrgos accept {username}`)"
        )
    claim = await _claim(fs.api, username)
    await _trust(fs, username, claim.identity, clock)
    cap = await fs.capability(item_path)  # NotFound for a missing item: nothing changed
    files = await _caps_files(fs)
    mine = files.get(username, [])
    if not write and any(i.path == item_path and i.writable for i in mine):
        # Write access taken back: they hold the write key, so the item is rotated (as by
        # unshare) and they get the new capability, read-only.
        item = SharedItem(item_path, cap.read_only(), False, clock())
        files[username] = [*(i for i in mine if i.path != item_path), item]
        await _rotate(fs, files, [item_path], {username})
        return SharedItem(item_path, (await fs.capability(item_path)).read_only(), False,
                          item.since)  # fmt: skip
    if write and not await links.has_own_writer(fs, item_path):
        # Into a writer of its own (a rotation): the caps files and links naming it follow.
        files[username] = [*(i for i in mine if i.path != item_path),
                           SharedItem(item_path, cap.read_only(), True, clock())]  # fmt: skip
        await _rotate(fs, files, [item_path], {username})
        cap = await fs.capability(item_path)
    item = SharedItem(item_path, cap if write else cap.read_only(), write, clock())
    items = [i for i in await _read_caps(fs, username) if i.path != item_path]
    await _write_caps(fs, username, [*items, item])
    return item


async def unshare(fs: FileSystem, path: str, username: str) -> list[str]:
    """Stop sharing `path` with `username`: the item is rotated (fresh labels, BATs and keys;
    a fresh writer while someone keeps write access, else back into its parent's writer),
    then their entry goes and everyone who keeps access gets the new capability. Their old
    capability then finds nothing. A refused rotation changes nothing. Returns the paths
    that could not be rotated because nothing is there any more (moved or removed since it
    was shared): their entry is gone, but what was shared there was not rotated."""
    item_path = _own_path(fs, path)
    check_username(username)
    files = await _caps_files(fs)
    items = files.get(username, [])
    kept = [item for item in items if item.path != item_path]
    if len(kept) == len(items):
        raise NotFound(f"{item_path} is not shared with {username}: `pyrgos shared` lists them")
    files[username] = kept
    return await _rotate(fs, files, [item_path], {username})


async def _caps_files(fs: FileSystem) -> dict[str, list[SharedItem]]:
    """Every follower's caps file of mine, by username (folders that are not one skipped)."""
    try:
        folders = await fs.listdir(f"/{_me(fs)}/{SHARED_DIR}", all=True)
    except NotFound:
        return {}
    files: dict[str, list[SharedItem]] = {}
    for folder in folders:
        if folder.is_dir:
            try:
                files[folder.name] = await _read_caps(fs, check_username(folder.name))
            except PyrgosError:
                continue
    return files


async def _rotate(
    fs: FileSystem, files: dict[str, list[SharedItem]], paths: list[str], dirty: set[str]
) -> list[str]:
    """Rotate each item of `paths` (one inside another rotated one goes with it), into a
    writer of its own exactly when an entry of `files` still shares it writable; then write
    the caps files of `dirty` and every caps file naming a rotated item, with the current
    capabilities (an item removed since is dropped). Returns the paths where nothing was
    found to rotate."""
    done: list[str] = []
    missing: list[str] = []
    linked = await links.writable_paths(fs)
    for path in sorted(set(paths)):
        if any(within(path, outer) for outer in done):
            continue
        writable = path in linked or any(
            i.path == path and i.writable for items in files.values() for i in items
        )
        try:
            await fs.rotate(path, own_writer=writable)
        except NotFound:  # moved or removed since: its entries are dropped below
            missing.append(path)
        done.append(path)
    await _reshare(fs, files, done, dirty)
    for path in done:
        if path not in missing:
            await links.reseal_links(fs, path)  # secret links follow the item's new keys
    return missing


async def _reshare(
    fs: FileSystem, files: dict[str, list[SharedItem]], paths: list[str], dirty: set[str]
) -> None:
    for username, items in files.items():
        updated: list[SharedItem] = []
        for item in items:
            if not any(within(item.path, path) for path in paths):
                updated.append(item)
                continue
            try:
                cap = await fs.capability(item.path)
            except NotFound:
                continue
            updated.append(SharedItem(item.path, cap if item.writable else cap.read_only(),
                                      item.writable, item.since))  # fmt: skip
        if updated != items or username in dirty:
            await _write_caps(fs, username, updated)


async def reshare(fs: FileSystem, path: str) -> None:
    """After `path` was rotated: every caps file naming it or an item below it gets the
    current capabilities (an item gone since is dropped from them)."""
    await _reshare(fs, await _caps_files(fs), [path], set())


async def rotate(fs: FileSystem, path: str) -> None:
    """Rotate my item at `path` (fresh labels, BATs and keys): whoever held its old
    capability (a revoked link's reader, a once-published path) finds nothing; followers it
    is shared with and its remaining secret links get the new one."""
    await _rotate(fs, await _caps_files(fs), [_own_path(fs, path)], set())


async def revoke_all(fs: FileSystem, username: str) -> list[str]:
    """Unshare everything shared with `username` (remove-follower): one rotation per item;
    returns the paths where nothing was found to rotate (see `unshare`)."""
    files = await _caps_files(fs)
    items = files.get(username, [])
    if not items:
        return []
    files[username] = []
    return await _rotate(fs, files, [item.path for item in items], {username})


# -- what others share with me -------------------------------------------------------------


async def _theirs(
    fs: FileSystem, username: str, followee: Followee
) -> tuple[Route, list[SharedItem]]:
    """What `username` shares with me, read from their caps file through the capability of
    their folder for me. Items naming another owner or a path outside their space are
    dropped: a hostile owner's file can point me at nothing else."""
    assert followee.cap is not None
    claim = await _claim(fs.api, username)
    if claim.identity != followee.cap.owner:
        raise Denied(_changed_message(username))
    route = Route(claim.identity, claim.home.encode())
    try:
        data = await fs.read_capability(followee.cap, route, MAX_CAPS_BYTES, [CAPS_FILE])
    except NotFound:
        return route, []  # nothing shared with me yet
    except TooLarge as exc:
        raise Corrupted(
            f"the list of what {username} shares with you is too large: {exc.message}"
        ) from None
    try:
        items = decode_caps(data)
    except MalformedInput as exc:
        raise Corrupted(
            f"the list of what {username} shares with you is malformed: {exc.message}"
        ) from None
    return route, [
        item for item in items
        if split_path(item.path)[0] == username and item.cap.owner == claim.identity
    ]  # fmt: skip


async def shared(fs: FileSystem) -> Shared:
    """What I share with whom, and what each followee shares with me."""
    me = _me(fs)
    state = await load_state(fs)
    mine: list[tuple[str, SharedItem]] = []
    try:
        folders = await fs.listdir(f"/{me}/{SHARED_DIR}", all=True)
    except NotFound:
        folders = []
    for folder in folders:
        if folder.is_dir:
            try:
                mine += [
                    (folder.name, i) for i in await _read_caps(fs, check_username(folder.name))
                ]
            except PyrgosError:
                continue
    with_me: list[tuple[str, SharedItem]] = []
    problems: list[str] = []
    for username, followee in sorted(state.following.items()):
        if followee.cap is None:
            continue
        try:
            with_me += [(username, item) for item in (await _theirs(fs, username, followee))[1]]
        except PyrgosError as exc:
            problems.append(f"{username}: {exc.message}")
    return Shared(sorted(mine, key=lambda m: (m[0], m[1].path)), with_me, problems)


class ShareResolver:
    """Other users' paths: `/bob/x/y` starts at the share of bob's whose path is the longest
    prefix of it, the rest walked from its capability; `ls /bob` lists the top names."""

    def __init__(self, fs: FileSystem) -> None:
        self.fs = fs
        self._known: dict[str, tuple[Route, list[SharedItem]]] = {}

    async def _shares(self, username: str) -> tuple[Route, list[SharedItem]]:
        if self.fs.session is None or username == self.fs.session.username:
            raise NotFound(f"/{username} is not shared with you")
        if username not in self._known:
            followee = (await load_state(self.fs)).following.get(username)
            if followee is None or followee.cap is None:
                raise NotFound(
                    f"/{username} is not shared with you: you do not follow {username}"
                    f" (`pyrgos follow {username}`)"
                )
            self._known[username] = await _theirs(self.fs, username, followee)
        return self._known[username]

    async def resolve(self, username: str, names: list[str]) -> Resolved:
        route, items = await self._shares(username)
        wanted = "/" + "/".join([username, *names])
        best = max(
            (item for item in items if within(wanted, item.path)),
            key=lambda item: len(item.path),
            default=None,
        )
        if best is None:
            raise NotFound(f"{wanted} is not shared with you")
        depth = len(split_path(best.path)) - 1
        return Resolved(best.cap, route, names[depth:])

    async def list_top(self, username: str) -> list[Listing] | None:
        route, items = await self._shares(username)
        top: dict[str, Listing] = {}
        for item in items:
            names = split_path(item.path)[1:]
            if len(names) == 1:  # the item itself: its kind and properties
                try:
                    opened = await self.fs.open_capability(item.cap, route)
                except UNREADABLE_ENTRY:
                    continue  # revoked since, or a forged capability: nothing to show
                top[names[0]] = Listing(names[0], opened.is_dir, opened.props)
        for item in items:
            names = split_path(item.path)[1:]
            if len(names) > 1 and names[0] not in top:  # a folder of which part is shared
                top[names[0]] = Listing(names[0], True)
        return [top[name] for name in sorted(top)]


def filesystem(session: Session) -> FileSystem:
    """The filesystem a user's commands work on: their home, and what others share with them."""
    fs = FileSystem(session)
    fs.resolver = links.ReadingResolver(session, others=[ShareResolver(fs)])
    return fs
