"""The in-memory model of users' filesystems and shares that scenarios are checked against.

Each user has top-level folders (`TOPS`) that they fill with random mkdir, write, overwrite,
rm and mv steps, share with followers (read-only or writable) and unshare (which rotates
keys), and link files from. An operation is chosen from the model (`choose`), run on the
system (`run`), and applied to the model only once the system acknowledged it (`apply`): at
the end every user's view must equal the model (`mismatches`), so every acknowledged write is
present. Used by tests/node/test_social_model.py and simulations/scenario.py.
"""

from __future__ import annotations

import io
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from node.client import FileSystem, NodeApi, links, sharing, social
from protocols.errors import Denied, NotFound

TOPS = ("d0", "d1")  # each user's top-level folders: what is shared
NAMES = ("a", "b", "c")
SIZES = (0, 100, 5000)  # empty, inline in its node, and in a raw fragment
DIR = None  # the model's value for a directory
KINDS = ("write", "write", "write", "mkdir", "rm", "mv", "share", "unshare", "link")

Tree = dict[str, bytes | None]  # path below the user's home -> file bytes or DIR


@dataclass
class Model:
    trees: dict[str, Tree] = field(default_factory=dict)
    # (owner, top folder) -> {follower: writable}
    shares: dict[tuple[str, str], dict[str, bool]] = field(default_factory=dict)

    @classmethod
    def empty(cls, users: Sequence[str]) -> Model:
        """Every user with their top folders made, nothing shared."""
        return cls({user: dict.fromkeys(TOPS, DIR) for user in users})

    def below(self, owner: str, top: str) -> Tree:
        prefix = top + "/"
        return {p: v for p, v in self.trees[owner].items() if p == top or p.startswith(prefix)}

    def dirs(self, owner: str, top: str) -> list[str]:
        return sorted(p for p, v in self.below(owner, top).items() if v is DIR)

    def files(self, owner: str, top: str) -> list[str]:
        return sorted(p for p, v in self.below(owner, top).items() if v is not DIR)


@dataclass(frozen=True)
class Op:
    """One operation: `actor` acts on `owner`'s `path` (below `/owner/`)."""

    kind: str
    owner: str
    actor: str
    path: str = ""
    target: str = ""  # mv's destination; share's and unshare's follower
    data: bytes = b""
    writable: bool = False

    def __str__(self) -> str:
        extra = f" {self.target}" if self.target else ""
        size = f" ({len(self.data)} B)" if self.kind == "write" else ""
        return f"{self.actor} {self.kind} /{self.owner}/{self.path}{extra}{size}"


def choose(
    model: Model, users: Sequence[str], rng: random.Random, kinds: Sequence[str] = KINDS
) -> Op | None:
    """A random operation that the model says can succeed, among `users` (who all follow
    each other); None when the draw has nothing to act on. A kind this module does not know
    (`mirror`: simulations/scenario.py runs it) comes as Op(kind, owner, owner, top) for the
    caller's `extra` runner (see `run`); the model does not change for it."""
    kind = rng.choice(kinds)
    owner, top, actor = rng.choice(users), rng.choice(TOPS), ""
    granted = [
        (o, t, u, w)
        for (o, t), us in sorted(model.shares.items())
        if o in users
        for u, w in sorted(us.items())
    ]
    writable = [(o, t, u) for o, t, u, w in granted if w]
    if kind in ("write", "mkdir") and writable and rng.random() < 0.5:
        owner, top, actor = rng.choice(writable)  # a follower writes into a writable share
    if kind == "unshare":
        if not granted:
            return None
        owner, top, actor, _ = rng.choice(granted)
    tree = model.trees[owner]
    if kind in ("write", "mkdir"):
        parent = rng.choice(model.dirs(owner, top))
        path = f"{parent}/{rng.choice(NAMES)}"
        if path in tree and (kind == "mkdir" or tree[path] is DIR):
            return None
        data = rng.randbytes(rng.choice(SIZES)) if kind == "write" else b""
        return Op(kind, owner, actor or owner, path, data=data)
    candidates = [p for p in model.below(owner, top) if p != top]
    if kind == "rm" and candidates:
        return Op("rm", owner, owner, rng.choice(candidates))
    if kind == "mv" and candidates:
        path = rng.choice(candidates)
        target_dir = rng.choice(
            [d for d in model.dirs(owner, top) if d != path and not d.startswith(path + "/")]
        )
        target = f"{target_dir}/{rng.choice(NAMES)}"
        return None if target in tree else Op("mv", owner, owner, path, target)
    if kind == "share":
        others = [u for u in users if u != owner]
        if not others:
            return None
        return Op("share", owner, owner, top, rng.choice(others), writable=rng.random() < 0.5)
    if kind == "unshare":
        return Op("unshare", owner, owner, top, actor)
    if kind == "link":
        files = model.files(owner, top)
        return Op("link", owner, owner, rng.choice(files)) if files else None
    if kind not in KINDS:
        return Op(kind, owner, owner, top)
    return None


OpenAnyone = Callable[[], Awaitable[NodeApi]]  # a client with no account, for links


async def run(
    op: Op,
    fs: Callable[[str], FileSystem],
    node_url: str,
    anyone: OpenAnyone,
    model: Model,
    extra: Mapping[str, Callable[[Op], Awaitable[None]]] | None = None,
) -> None:
    """Run `op` on the system; raise what it raises. A link is made with one use, opened by a
    stranger and checked against the model, and its second use must be refused. Kinds this
    module does not know run through `extra`."""
    actor, base = fs(op.actor), f"/{op.owner}"
    if op.kind == "mkdir":
        await actor.mkdir(f"{base}/{op.path}")
    elif op.kind == "write":
        await actor.write_file(f"{base}/{op.path}", io.BytesIO(op.data))
    elif op.kind == "rm":
        await actor.remove(f"{base}/{op.path}", recursive=True)
    elif op.kind == "mv":
        await actor.move(f"{base}/{op.path}", f"{base}/{op.target}")
    elif op.kind == "share":
        await sharing.share(actor, f"{base}/{op.path}", op.target, write=op.writable)
    elif op.kind == "unshare":
        await sharing.unshare(actor, f"{base}/{op.path}", op.target)
    elif op.kind == "link":
        url = await links.create_link(actor, f"{base}/{op.path}", node_url=node_url, max_uses=1)
        api = await anyone()
        async with api:
            reader = await links.link_filesystem(api, url)
            seen = await reader.read_bytes(f"/{links.LINK_NAME}", 1 << 20)
            if seen != model.trees[op.owner][op.path]:
                raise AssertionError(f"the link to /{op.owner}/{op.path} opened other bytes")
            try:
                await links.open_link(api, url)
            except Denied:
                pass
            else:
                raise AssertionError("a link of one use opened twice")
    elif extra is not None and op.kind in extra:
        await extra[op.kind](op)
    else:
        raise ValueError(f"unknown operation {op.kind}")


def apply(model: Model, op: Op) -> None:
    """What `op`, acknowledged, changed."""
    tree = model.trees[op.owner]
    if op.kind == "mkdir":
        tree[op.path] = DIR
    elif op.kind == "write":
        tree[op.path] = op.data
    elif op.kind == "rm":
        for p in [p for p in tree if p == op.path or p.startswith(op.path + "/")]:
            del tree[p]
    elif op.kind == "mv":
        for p in [p for p in tree if p == op.path or p.startswith(op.path + "/")]:
            tree[op.target + p[len(op.path) :]] = tree.pop(p)
    elif op.kind == "share":
        model.shares.setdefault((op.owner, op.path), {})[op.target] = op.writable
    elif op.kind == "unshare":
        del model.shares[(op.owner, op.path)][op.target]


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


async def mismatches(
    fs: Callable[[str], FileSystem], model: Model, users: Sequence[str]
) -> list[str]:
    """Where what `users` see differs from the model: their own folders, what is shared with
    them, and what is no longer shared with them (which must be unreadable). Empty: equal."""
    found = []
    for user in users:
        view = fs(user)
        for top in TOPS:
            if await walk(view, f"/{user}", top) != model.below(user, top):
                found.append(f"{user} sees /{user}/{top} unlike the model")
        for (owner, top), sharees in sorted(model.shares.items()):
            if owner == user or owner not in users:
                continue
            if user in sharees:
                if await walk(view, f"/{owner}", top) != model.below(owner, top):
                    found.append(f"{user} sees /{owner}/{top} unlike the model")
            else:
                try:
                    await view.listdir(f"/{owner}/{top}")
                    found.append(f"{user} still reads /{owner}/{top} after its unshare")
                except (NotFound, Denied):
                    pass
    return found


async def befriend(fs: Callable[[str], FileSystem], users: Sequence[str]) -> None:
    """Every one of `users` follows every other, and each accepts."""
    for follower in users:
        for owner in users:
            if follower != owner:
                await social.follow(fs(follower), owner)
    for owner in users:
        await social.requests(fs(owner))
        for follower in users:
            if follower != owner:
                await social.accept(fs(owner), follower)
    for follower in users:
        await social.requests(fs(follower))


async def make_tops(fs: Callable[[str], FileSystem], users: Sequence[str]) -> None:
    for user in users:
        for top in TOPS:
            await fs(user).mkdir(f"/{user}/{top}")
