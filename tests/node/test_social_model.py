"""A model test of sharing: random mkdir, write, overwrite, rm, mv, share, unshare and link
steps by three users homed on three nodes, checked against an in-memory model after every
step. Each user's view of their own folders, of what is shared with them, and of what is no
longer shared with them must equal the model's."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field

import pytest
import trio

from node.client import FileSystem, NodeApi, links, sharing, social
from protocols.errors import Denied, NotFound
from tests.node.conftest import Users

USERS = ("alice", "bob", "carol")
TOPS = ("d0", "d1")  # each user's top-level folders: what is shared
NAMES = ("a", "b", "c")
SIZES = (0, 100, 5000)  # empty, inline in its node, and in a raw fragment
STEPS = 40
DIR = None  # the model's value for a directory

Tree = dict[str, bytes | None]  # path below the user's home -> file bytes or DIR


@dataclass
class Model:
    trees: dict[str, Tree] = field(default_factory=dict)
    # (owner, top folder) -> {follower: writable}
    shares: dict[tuple[str, str], dict[str, bool]] = field(default_factory=dict)

    def below(self, owner: str, top: str) -> Tree:
        prefix = top + "/"
        return {p: v for p, v in self.trees[owner].items() if p == top or p.startswith(prefix)}

    def dirs(self, owner: str, top: str) -> list[str]:
        return sorted(p for p, v in self.below(owner, top).items() if v is DIR)

    def files(self, owner: str, top: str) -> list[str]:
        return sorted(p for p, v in self.below(owner, top).items() if v is not DIR)


async def walk(fs: FileSystem, base: str, top: str) -> Tree:
    """What `fs` sees below `base`/`top`, as the model's paths (`top/...`)."""
    seen: Tree = {top: DIR}
    pending = [top]
    while pending:
        path = pending.pop()
        for item in await fs.listdir(f"{base}/{path}"):
            child = f"{path}/{item.name}"
            if item.is_dir:
                seen[child] = DIR
                pending.append(child)
            else:
                seen[child] = await fs.read_bytes(f"{base}/{child}", 1 << 20)
    return seen


async def check(users: Users, model: Model) -> None:
    for user in USERS:
        fs = users.fs(user)
        for top in TOPS:
            assert await walk(fs, f"/{user}", top) == model.below(user, top), (user, top)
        for (owner, top), sharees in model.shares.items():
            if owner == user:
                continue
            if user in sharees:
                seen = await walk(fs, f"/{owner}", top)
                assert seen == model.below(owner, top), (user, owner, top)
            else:
                with pytest.raises((NotFound, Denied)):
                    await fs.listdir(f"/{owner}/{top}")


async def befriend_all(users: Users) -> None:
    for follower in USERS:
        for owner in USERS:
            if follower != owner:
                await social.follow(users.fs(follower), owner)
    for owner in USERS:
        await social.requests(users.fs(owner))
        for follower in USERS:
            if follower != owner:
                await social.accept(users.fs(owner), follower)
    for follower in USERS:
        await social.requests(users.fs(follower))


async def step(users: Users, model: Model, rng: random.Random) -> str:
    """One random operation, applied to the system and the model; returns what it was."""
    kind = rng.choice(["write", "write", "write", "mkdir", "rm", "mv", "share", "unshare", "link"])
    owner, top, actor = rng.choice(USERS), rng.choice(TOPS), ""
    granted = [(o, t, u, w) for (o, t), us in model.shares.items() for u, w in us.items()]
    writable = [(o, t, u) for o, t, u, w in granted if w]
    if kind in ("write", "mkdir") and writable and rng.random() < 0.5:
        owner, top, actor = rng.choice(writable)  # a follower writes into a writable share
    if kind == "unshare" and granted:
        owner, top, actor, _ = rng.choice(granted)
    tree = model.trees[owner]
    fs = users.fs(actor if kind in ("write", "mkdir") and actor else owner)
    base = f"/{owner}"
    if kind in ("write", "mkdir"):
        parent = rng.choice(model.dirs(owner, top))
        path = f"{parent}/{rng.choice(NAMES)}"
        if path in tree and (kind == "mkdir" or tree[path] is DIR):
            return f"skip {kind} {path}"
        if kind == "mkdir":
            await fs.mkdir(f"{base}/{path}")
            tree[path] = DIR
        else:
            data = rng.randbytes(rng.choice(SIZES))
            await fs.write_file(f"{base}/{path}", io.BytesIO(data))
            tree[path] = data
        return f"{actor or owner} {kind} {base}/{path}"
    candidates = [p for p in model.below(owner, top) if p != top]
    if kind == "rm" and candidates:
        path = rng.choice(candidates)
        await fs.remove(f"{base}/{path}", recursive=True)
        for p in [p for p in tree if p == path or p.startswith(path + "/")]:
            del tree[p]
        return f"{owner} rm {path}"
    if kind == "mv" and candidates:
        path = rng.choice(candidates)
        target_dir = rng.choice(
            [d for d in model.dirs(owner, top) if d != path and not d.startswith(path + "/")]
        )
        name = rng.choice(NAMES)
        target = f"{target_dir}/{name}"
        if target in tree:
            return f"skip mv {path} {target}"
        await fs.move(f"{base}/{path}", f"{base}/{target}")
        for p in [p for p in tree if p == path or p.startswith(path + "/")]:
            tree[target + p[len(path) :]] = tree.pop(p)
        return f"{owner} mv {path} {target}"
    if kind == "share":
        follower = rng.choice([u for u in USERS if u != owner])
        writable = rng.random() < 0.5
        await sharing.share(fs, f"{base}/{top}", follower, write=writable)
        model.shares.setdefault((owner, top), {})[follower] = writable
        return f"{owner} share {top} {follower} {'rw' if writable else 'r'}"
    if kind == "unshare" and actor:
        await sharing.unshare(fs, f"{base}/{top}", actor)
        del model.shares[(owner, top)][actor]
        return f"{owner} unshare {top} {actor}"
    if kind == "link":
        files = model.files(owner, top)
        if not files:
            return "skip link"
        path = rng.choice(files)
        url = await links.create_link(fs, f"{base}/{path}", node_url=users.urls[0], max_uses=1)
        async with NodeApi(rng.choice(users.urls)) as anyone:
            reader = await links.link_filesystem(anyone, url)
            assert await reader.read_bytes(f"/{links.LINK_NAME}", 1 << 20) == tree[path]
            with pytest.raises(Denied):  # its one use is spent
                await links.open_link(anyone, url)
        return f"{owner} link {path}"
    return f"skip {kind}"


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_every_view_equals_the_model(users: Users, seed: int) -> None:
    rng = random.Random(seed)
    model = Model({user: dict.fromkeys(TOPS, DIR) for user in USERS})
    with trio.fail_after(240):
        await befriend_all(users)
        for user in USERS:
            fs = users.fs(user)
            for top in TOPS:
                await fs.mkdir(f"/{user}/{top}")
        await check(users, model)
        trace = []
        for _ in range(STEPS):
            trace.append(await step(users, model, rng))
            try:
                await check(users, model)
            except AssertionError as exc:
                raise AssertionError(f"after {trace}: {exc}") from exc
