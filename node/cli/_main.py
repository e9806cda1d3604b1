"""The `pyrgos` command: parses arguments, asks for passwords, shows progress, prints results.

Every failure is one line on stderr and a non-zero exit status; no logic lives here.
"""

from __future__ import annotations

import argparse
import gc
import getpass
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

from node import client
from node.home import (
    DEFAULT_API,
    DEFAULT_LISTEN,
    DEFAULT_MAX_DAILY_SIGNUPS,
    DEFAULT_MAX_SOURCE_SIGNUPS,
    NodeConfig,
    NodeHome,
    default_home,
    parse_size,
)
from protocols.errors import (
    AuthFailed,
    Conflict,
    Denied,
    InvalidName,
    MalformedInput,
    NotFound,
    PyrgosError,
    QuotaExceeded,
    RateLimited,
    Unavailable,
    WeakPassword,
)
from protocols.names import check_file_name

# A command imports what it uses when it runs (trio, the client's modules, the node side):
# `pyrgos --help` and `whoami` need none of it, and it is most of a command's start.
if TYPE_CHECKING:
    from node.client import FileSystem, NodeApi, SavedSession, Session
    from protocols.links import LinkUrl

EXIT_CODES: Final[dict[type[PyrgosError], int]] = {
    AuthFailed: 3,
    NotFound: 4,
    Conflict: 5,
    QuotaExceeded: 6,
    Unavailable: 7,
    Denied: 8,
    InvalidName: 9,
    WeakPassword: 9,
    RateLimited: 10,
}
DEFAULT_NODE: Final = f"http://{DEFAULT_API}"
T = TypeVar("T")
EXIT_INCOMPLETE: Final = 11  # a folder download finished without the entries it could not read


class UsageError(Exception):
    """A command used wrongly (exit status 2, as argparse does)."""


def warn(message: str) -> None:
    print(f"pyrgos: warning: {message}", file=sys.stderr)


def _unreadable(count: int, where: str) -> str:
    entries = "entry" if count == 1 else "entries"
    return (
        f"skipped {count} unreadable {entries} in {where}; "
        "`pyrgos rm --bad DIR` removes those of a directory"
    )


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"pyrgos: error: {message}", file=sys.stderr)
    raise SystemExit(code)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr like every other failure."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see `{self.prog} --help`)", 2)


# -- passwords, nodes, sessions ----------------------------------------------------------


class Passwords:
    """Where passwords come from: environment, standard input (one per line), or a prompt."""

    def __init__(self, from_stdin: bool) -> None:
        self._lines: Iterator[str] | None = iter(sys.stdin) if from_stdin else None

    def get(self, env: str, prompt: str, *, confirm: bool = False) -> str:
        if self._lines is not None:
            line = next(self._lines, None)
            if line is None:
                raise UsageError("--password-stdin: standard input ended before a password")
            return line.rstrip("\r\n")
        value = os.environ.get(env)
        if value is not None:
            return value
        if not sys.stdin.isatty():
            raise UsageError(
                f"no terminal to ask for a password: set {env} or use --password-stdin"
            )
        first = getpass.getpass(prompt)
        if confirm and getpass.getpass("Repeat it: ") != first:
            raise UsageError("the two passwords differ")
        return first


def trio_run(main: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run a command's async part on trio."""
    import trio

    return trio.run(main, *args)


def node_url() -> str:
    """PYRGOS_NODE, else the URL the local node ($PYRGOS_HOME) wrote, else the default."""
    return os.environ.get("PYRGOS_NODE") or NodeHome(default_home()).running_api() or DEFAULT_NODE


@asynccontextmanager
async def open_session(
    args: argparse.Namespace, saved: SavedSession | None = None
) -> AsyncIterator[Session]:
    """The session this device saved (`saved`, when already read), checked with its node."""
    saved = saved or client.Profile(args.profile).load()
    if saved.expiry <= time.time():
        raise AuthFailed(
            f"this device's session for {saved.username} has expired:"
            f" run `pyrgos login {saved.username}`"
        )
    async with client.NodeApi(node_url()) as api:
        yield await client.reopen(api, saved.username, saved.data, saved.token, saved.expiry)


def remember(args: argparse.Namespace, session: Session) -> None:
    saved = client.SavedSession(
        session.api.url, session.username, session.data, session.token, session.expiry
    )
    client.Profile(args.profile).save(saved)


# -- progress ------------------------------------------------------------------------------


@contextmanager
def progress_bar(total: int | None, label: str) -> Iterator[Callable[[int], None] | None]:
    """A transfer bar on a terminal (stderr); nothing when output is not a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.update(task, advance=n)


# -- node commands ---------------------------------------------------------------------------


def _signups_a_day(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a number of signups a day: {text!r} (e.g. 20)")
    return int(text)


def cmd_node_init(args: argparse.Namespace) -> None:
    home = NodeHome(args.home)
    if args.exist_ok and home.initialised:
        return
    if args.join is not None:  # a swarm's settings; --api and --listen may still move it
        config = _join_config(args)
    else:
        config = NodeConfig(
            api=args.api or DEFAULT_API,
            test_mode=args.test_mode,
            quota=parse_size(args.quota),
            listen=args.listen or DEFAULT_LISTEN,
            pki=args.pki,
            max_daily_signups=args.max_daily_signups,
            max_source_signups=args.max_source_signups,
        )
    node_id = home.init(config, signup_token=args.signup_token or "")
    print(f"initialised node {node_id} in {home.path}")
    if config.test_mode:
        print("test mode: this node accepts the small KDF profile; never use it for real data")
    if args.join is not None:
        print(f"it follows the PKI node of the swarm {args.join}: `pyrgos node run --home"
              f" {home.path}` joins the swarm")  # fmt: skip


def cmd_node_run(args: argparse.Namespace) -> None:
    import logging

    from node import heap
    from node.daemon import run_node

    heap.tune(heap.NODE_MMAP_THRESHOLD, heap.NODE_TRIM_THRESHOLD, heap.NODE_ARENAS)
    home = NodeHome(args.home)

    def ready(node_id: str, url: str) -> None:
        print(f"pyrgos node {node_id}")
        print(f"API listening at {url}")
        print("next, in another terminal: pyrgos signup YOUR-NAME")
        sys.stdout.flush()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    trio_run(run_node, home, ready)


def cmd_node_info(args: argparse.Namespace) -> None:
    home = NodeHome(args.home)
    config = home.config()
    info: dict[str, Any] = {
        "node_id": home.node_id(),
        "home": str(home.path),
        "api": home.running_api(),
        "running": False,
        "configured_api": config.api,
        "listen": [config.listen],
        "pki_role": "root" if config.pki_root else "mirror",
        "pki": config.pki or None,
        "test_mode": config.test_mode,
        "quota": config.quota,
    }
    if info["api"]:
        try:
            live = _ask_node("node.info", {}, url=info["api"], timeout=5)
            info["running"] = True
            info["listen"] = live.get("addrs") or info["listen"]
            info["pki_head"] = live.get("pki_head")
            info["stats"] = live.get("stats", {})
        except Unavailable:
            info["api"] = None
    if args.json:
        import json

        print(json.dumps(info, indent=2, default=_json_value))
        return
    for key, value in info.items():
        print(f"{key:15} {value}")


def _json_value(value: object) -> object:
    """CIDs as their text, bytes as hex: what JSON cannot hold itself."""
    from protocols.cid import CID

    if isinstance(value, CID):
        return value.text
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _ask_node(
    method: str, args: dict[str, Any], *, url: str | None = None, timeout: float = 30
) -> Any:
    """One call to a node (default: the one clients use) from a command without a session."""

    async def ask() -> Any:
        async with client.NodeApi(url or node_url(), timeout=timeout) as api:
            return await api.call(method, args)

    return trio_run(ask)


def _print_record(record: dict[str, Any], as_json: bool) -> None:
    import json

    from protocols.cid import CID

    shown = {key: value.text if isinstance(value, CID) else value for key, value in record.items()}
    if as_json:
        print(json.dumps(shown, indent=2, default=_json_value))
        return
    for key, value in shown.items():
        print(f"{key:15} {value.hex() if isinstance(value, bytes) else value}")


def cmd_pki_lookup(args: argparse.Namespace) -> None:
    claim = _ask_node("pki.lookup", {"username": args.user})
    record = {
        "username": claim["username"],
        "identity": claim["identity"],
        "home": claim["home"],
        "expiry": claim["expiry"],
        "mirrors": claim.get("mirrors", [])
        if args.json
        else " ".join(claim.get("mirrors", [])) or "-",
    }
    _print_record(record, args.json)


def cmd_pki_status(args: argparse.Namespace) -> None:
    status = _ask_node("pki.status", {})
    if args.json:
        _print_record(status, True)
        return
    health = status.pop("pki_node_health", None)  # a mirror's: is its PKI node reachable
    _print_record(status, False)
    if isinstance(health, dict):
        reachable = {True: "yes", False: "NO", None: "not tried yet"}.get(health.get("reachable"))
        print(f"{'reachable':15} {reachable}")
        for key in ("last_success", "last_error_time", "next_retry"):
            moment = health.get(key)
            shown = "-"
            if isinstance(moment, int):
                shown = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))
            print(f"{key:15} {shown}")
        print(f"{'last_error':15} {health.get('last_error') or '-'}")
        print(f"{'failures':15} {health.get('failures')}")


def cmd_node_gc(args: argparse.Namespace) -> None:
    from node.daemon import collect_offline

    home = NodeHome(args.home)
    home.require()
    url = home.running_api()
    if url is not None:
        try:
            result = _ask_node("admin.gc", {"token": home.admin_token()}, url=url, timeout=120)
        except Unavailable as exc:
            try:
                result = collect_offline(home)  # the node is gone: collect here
            except Unavailable:
                raise exc from None  # it runs (its database is locked): its reason stands
    else:
        result = collect_offline(home)
    print(f"deleted {result['deleted']} blocks, freed {result['freed']} bytes")


def _admin_call(home: NodeHome, method: str, args: dict[str, Any]) -> Any:
    """A maintenance call to the node running in `home`, with its admin token."""
    home.require()
    url = home.running_api()
    if url is None:
        raise Unavailable(
            f"the node in {home.path} is not running: start it with `pyrgos node run`"
        )
    return _ask_node(method, {"token": home.admin_token(), **args}, url=url, timeout=120)


def cmd_node_mirror_add(args: argparse.Namespace) -> None:
    token = args.token or os.environ.get("PYRGOS_MIRROR_TOKEN") or ""
    if not token:
        raise UsageError("give the user's mirror token: --token TOKEN or $PYRGOS_MIRROR_TOKEN")
    from protocols.mirrors import MirrorToken

    named = MirrorToken.from_text(token).username
    if named != args.user:
        raise UsageError(f"this token is {named}'s, not {args.user}'s")
    _admin_call(NodeHome(args.home), "admin.mirror.add", {"mirror": token})
    print(f"mirroring {args.user}: the first copy starts now (`pyrgos node mirror list`)")


def cmd_node_mirror_list(args: argparse.Namespace) -> None:
    rows = _admin_call(NodeHome(args.home), "admin.mirror.list", {})["mirrors"]
    if args.json:
        import json

        print(json.dumps(rows, indent=2, default=_json_value))
        return
    print(f"{'USER':20} {'STATE':7} {'LAST SYNC':19} {'BLOCKS':>8} {'SIZE':>10} {'LAG':>6}")
    for row in rows:
        synced = row.get("synced")
        when = "-" if not isinstance(synced, int) else _format_time(synced * 1000)
        print(
            f"{row['username']:20} {row['state']:7} {when:19} {row['blocks']:>8} "
            f"{_human(row['bytes']):>10} {str(row['lag']) + ' s':>6}"
        )
        if row.get("error"):
            print(f"  last error: {row['error']}")


def cmd_node_mirror_remove(args: argparse.Namespace) -> None:
    _admin_call(NodeHome(args.home), "admin.mirror.remove", {"username": args.user})
    print(f"stopped mirroring {args.user}; the next garbage collection frees the copy")


def cmd_mirror_token(args: argparse.Namespace) -> None:
    async def run() -> str:
        async with open_session(args) as session:
            return client.mirror_token(session)

    token = trio_run(run)
    warn("this token lets a node copy (not decrypt) all your blocks: give it only to the "
         "operator of the node that is to mirror you")  # fmt: skip
    print(token)


def cmd_mirror_publish(args: argparse.Namespace) -> None:
    async def run() -> Any:
        async with open_session(args) as session:
            return await client.publish_mirrors(session, args.nodes)

    claim = trio_run(run)
    if claim.mirrors:
        print(f"your PKI claim lists {len(claim.mirrors)} mirror(s): {' '.join(claim.mirrors)}")
    else:
        print("your PKI claim lists no mirror")


def cmd_migrate(args: argparse.Namespace) -> None:
    async def run() -> Any:
        async with open_session(args) as session:
            return await client.migrate(session, args.to)

    claim = trio_run(run)
    print(f"your home is now {claim.home}; your old home {claim.mirrors[0]} mirrors you")


# -- account commands ------------------------------------------------------------------------


def _enter_account(
    args: argparse.Namespace,
    action: Callable[[NodeApi, str, str], Awaitable[Session]],
    *,
    confirm: bool,
) -> Session:
    """Ask for the password, run `action` (signup or login) and remember the session."""
    prompt = f"Password for {args.user}: "
    password = Passwords(args.password_stdin).get("PYRGOS_PASSWORD", prompt, confirm=confirm)

    async def run() -> Session:
        async with client.NodeApi(node_url()) as api:
            return await action(api, args.user, password)

    session = trio_run(run)
    remember(args, session)
    if session.weak_kdf:
        print(
            f"WARNING: {session.username} uses the small test KDF profile"
            f" ({client.TEST_KDF_ENV}=1 on a node in test mode): its password can be guessed"
            " thousands of times faster than a real account's. Use it for tests only.",
            file=sys.stderr,
        )
    return session


def cmd_signup(args: argparse.Namespace) -> None:
    token = args.signup_token or os.environ.get("PYRGOS_SIGNUP_TOKEN") or None

    async def signup(api: NodeApi, user: str, password: str) -> Session:
        return await client.signup(api, user, password, token=token)

    session = _enter_account(args, signup, confirm=True)
    print(f"signed up {session.username} at {session.api.url}; logged in")


def cmd_login(args: argparse.Namespace) -> None:
    session = _enter_account(args, client.login, confirm=False)
    print(f"logged in as {session.username} at {session.api.url}")


def cmd_logout(args: argparse.Namespace) -> None:
    """End the session at the home node, then forget it here. A node that cannot be reached
    leaves a plain logout local (with a warning); `--all` then fails and keeps the file."""
    profile = client.Profile(args.profile)
    try:
        saved = profile.load()
    except NotFound:
        if args.all:
            raise
        print("was not logged in")
        return
    except MalformedInput:
        if args.all:
            raise
        profile.clear()
        print("logged out (the session file was damaged)")
        return

    async def run() -> bool:
        from protocols import methods

        async with client.NodeApi(node_url()) as api:
            api.session = saved.token
            call = methods.SessionEnd(saved.data.home.owner, all=args.all)
            return (await client.typed.request(api, call, methods.Done)).done

    try:
        trio_run(run)
    except (Unavailable, Denied) as exc:
        if args.all:
            raise
        print(
            f"warning: the node did not end this session ({exc.message});"
            " it stays usable there until it expires: `pyrgos login` then `pyrgos logout --all`"
            " ends every session",
            file=sys.stderr,
        )
    profile.clear()
    print("logged out everywhere" if args.all else "logged out")


def cmd_whoami(args: argparse.Namespace) -> None:
    saved = client.Profile(args.profile).load()
    print(f"{saved.username} at {node_url()}")


def cmd_passwd(args: argparse.Namespace) -> None:
    passwords = Passwords(args.password_stdin)
    current = passwords.get("PYRGOS_PASSWORD", "Current password: ")
    new = passwords.get("PYRGOS_NEW_PASSWORD", "New password: ", confirm=True)

    async def run() -> Session:
        async with open_session(args) as session:
            return await client.change_password(session, current, new)

    remember(args, trio_run(run))
    print("password changed; every other session of this user has ended")


# -- file commands ---------------------------------------------------------------------------


async def _act(action: Callable[[FileSystem], Awaitable[Any]], fs: FileSystem) -> Any:
    """Run `action` on `fs`. What the imports and the session made lives for the whole run: it
    is frozen, so that the collections long transfers make (node/client/_fs.py) stay cheap."""
    gc.freeze()
    return await action(fs)


def run_fs(args: argparse.Namespace, action: Callable[[FileSystem], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        async with open_session(args) as session:
            return await _act(action, client.sharing.filesystem(session))

    return trio_run(run)


def run_read(
    args: argparse.Namespace, path: str, action: Callable[[FileSystem], Awaitable[Any]]
) -> Any:
    """`run_fs` for reads of `path`: without a login, what users publish is still readable
    (a relative path needs a login); with one, another user's paths fall back to what they
    publish."""

    async def run() -> Any:
        try:
            saved = client.Profile(args.profile).load()
        except NotFound:  # not logged in: published items only
            if not path.startswith("/"):
                raise
            async with client.NodeApi(node_url()) as api:
                fs = client.FileSystem(api, client.links.PublicResolver(api))
                return await _act(action, fs)
        async with open_session(args, saved) as session:
            return await _act(action, client.sharing.filesystem(session))

    return trio_run(run)


async def _is_dir(fs: FileSystem, path: str) -> bool | None:
    """True for a directory, False for a file, None when nothing is there."""
    try:
        return (await fs.stat(path)).is_dir
    except NotFound:
        return None


def cmd_put(args: argparse.Namespace) -> None:
    _upload(Path(args.local), args.remote, lambda action: run_fs(args, action))


def _upload(
    local: Path, remote: str, run: Callable[[Callable[[FileSystem], Awaitable[None]]], None]
) -> None:
    """Upload the file or folder `local` to `remote` (into it, when it is a folder) on the
    filesystem `run` hands its action."""
    if not local.exists():
        raise UsageError(f"{local} does not exist")
    name = local.resolve().name
    folder = local.is_dir()
    total = sum(p.stat().st_size for p in local.rglob("*") if p.is_file()) if folder else None

    async def into(fs: FileSystem) -> str:
        return f"{remote.rstrip('/')}/{name}" if await _is_dir(fs, remote) else remote

    if folder:

        async def put_folder(fs: FileSystem) -> None:
            with progress_bar(total, f"put {name}") as progress:
                await client.put_tree(fs, local, await into(fs), progress)

        run(put_folder)
        return
    with local.open("rb") as source:

        async def put_file(fs: FileSystem) -> None:
            with progress_bar(os.fstat(source.fileno()).st_size, f"put {name}") as progress:
                await fs.write_file(await into(fs), source, progress=progress)

        run(put_file)


def cmd_get(args: argparse.Namespace) -> None:
    local = Path(args.local)
    into_folder = local.is_dir()

    async def action(fs: FileSystem) -> int:
        props = await fs.stat(args.remote)
        target = local / props.name if into_folder else local
        if props.is_dir:
            total = await client.tree_size(fs, args.remote)
            with progress_bar(total, f"get {props.name}") as progress:
                return await client.get_tree(fs, args.remote, target, progress)
        with progress_bar(props.size, f"get {props.name}") as progress:
            await client.get_file(fs, args.remote, target, progress, props.size)
        return 0

    skipped = run_read(args, args.remote, action)
    if skipped:
        warn(_unreadable(skipped, args.remote) + "; the download is incomplete")
        raise SystemExit(EXIT_INCOMPLETE)


def cmd_cat(args: argparse.Namespace) -> None:
    if args.offset < 0 or (args.length is not None and args.length < 0):
        raise UsageError("--offset and --length must not be negative")
    run_read(args, args.remote, lambda fs: _cat(fs, args.remote, args.offset, args.length))


async def _cat(fs: FileSystem, remote: str, offset: int = 0, length: int | None = None) -> None:
    out = sys.stdout.buffer
    async with fs.read(remote, offset, length) as pieces:
        async for piece in pieces:
            view = memoryview(piece)
            while view:  # under PYTHONUNBUFFERED stdout is raw: a write may be short
                view = view[out.write(view) :]
    out.flush()


def _mode(is_dir: bool) -> str:
    return "d" if is_dir else "-"


def cmd_ls(args: argparse.Namespace) -> None:
    contents = run_read(
        args, args.remote, lambda fs: fs.contents(args.remote, long=args.long, all=args.all)
    )
    for item in contents.items:
        if not args.long:
            print(item.name + ("/" if item.is_dir else ""))
            continue
        props = item.props
        size = props.size if props is not None else 0
        when = _format_time(props.modified) if props is not None else "-"
        suffix = "/" if item.is_dir else ""
        print(f"{_mode(item.is_dir)} {size:>14} {when} {item.name}{suffix}")
    if contents.unreadable:
        sys.stdout.flush()  # the listing first, then the warning, when both go to a terminal
        warn(_unreadable(contents.unreadable, args.remote or "the home directory"))


def _format_time(millis: int) -> str:
    import datetime

    moment = datetime.datetime.fromtimestamp(millis / 1000, tz=datetime.UTC).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M")


def cmd_mkdir(args: argparse.Namespace) -> None:
    run_fs(args, lambda fs: fs.mkdir(args.remote, parents=args.parents))


def cmd_rm(args: argparse.Namespace) -> None:
    if args.bad:
        if args.recursive:
            raise UsageError("--bad removes a directory's unreadable entries; it takes no -r")
        removed = run_fs(args, lambda fs: fs.remove_unreadable(args.remote))
        print(f"removed {removed} unreadable {'entry' if removed == 1 else 'entries'}")
        return
    run_fs(args, lambda fs: fs.remove(args.remote, recursive=args.recursive))


def cmd_mv(args: argparse.Namespace) -> None:
    run_fs(args, lambda fs: fs.move(args.source, args.target))


def cmd_space(args: argparse.Namespace) -> None:
    used, quota = run_fs(args, lambda fs: fs.usage())
    share = 100 * used / quota if quota else 0.0
    print(f"used {_human(used)} of {_human(quota)} ({share:.1f}%)")


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    raise AssertionError


# -- social commands -------------------------------------------------------------------------


def cmd_follow(args: argparse.Namespace) -> None:
    run_fs(args, lambda fs: client.social.follow(fs, args.user))
    print(f"asked to follow {args.user}; `pyrgos requests` picks up their answer")


def cmd_requests(args: argparse.Namespace) -> None:
    result = run_fs(args, client.social.requests)
    for name in result.accepted:
        print(f"{name} accepted: you now follow {name}")
    for name in result.rejected:
        print(f"{name} declined your follow request")
    for pending in result.pending:
        mark = "  KEY CHANGED" if pending.key_changed else ""
        print(f"{pending.username}  asked {_format_time(pending.time)}{mark}")
    if not (result.pending or result.accepted or result.rejected):
        print("no follow requests")
    sys.stdout.flush()
    for message in result.warnings:
        warn(message)
    if result.dropped:
        warn(f"removed {result.dropped} unreadable or forged request(s) from the inbox")


def cmd_accept(args: argparse.Namespace) -> None:
    run_fs(args, lambda fs: client.social.accept(fs, args.user, follow_back=args.follow_back))
    also = f"; asked to follow {args.user} back" if args.follow_back else ""
    print(f"{args.user} now follows you{also}")


def cmd_reject(args: argparse.Namespace) -> None:
    run_fs(args, lambda fs: client.social.reject(fs, args.user))
    print(f"declined {args.user}'s follow request")


def cmd_followers(args: argparse.Namespace) -> None:
    for name, since in run_fs(args, client.social.followers):
        print(f"{name}  since {_format_time(since)}")


def cmd_following(args: argparse.Namespace) -> None:
    for name, followee in run_fs(args, client.social.following):
        state = "pending: not answered yet" if followee.cap is None else "following"
        print(f"{name}  {state} since {_format_time(followee.since)}")


def cmd_unfollow(args: argparse.Namespace) -> None:
    run_fs(args, lambda fs: client.social.unfollow(fs, args.user))
    print(f"no longer following {args.user}")


def cmd_remove_follower(args: argparse.Namespace) -> None:
    missing = run_fs(args, lambda fs: client.social.remove_follower(fs, args.user))
    print(f"{args.user} no longer follows you")
    _warn_not_rotated(missing)


def _warn_not_rotated(missing: list[str]) -> None:
    sys.stdout.flush()
    for path in missing:
        warn(
            f"nothing is at {path} any more, so it was not rotated: if it was moved, what was"
            " shared there may still open it (share it again, then unshare it, at its new path)"
        )


def print_fingerprint(held: client.social.Fingerprint, *, mine: bool, qr: bool) -> None:
    """The safety number in three lines of four groups, and its QR code when asked."""
    groups = held.digits.split(" ")
    if mine:
        print(f"your fingerprint ({held.username}):")
    else:
        print(f"fingerprint of {held.username} ({'' if held.verified else 'not '}verified):")
    for row in range(0, len(groups), 4):
        print("  " + " ".join(groups[row : row + 4]))
    if qr:
        import qrcode

        code = qrcode.QRCode(border=1)
        code.add_data(held.digits.replace(" ", ""))
        code.make(fit=True)
        code.print_ascii(out=sys.stdout)


def cmd_fingerprint(args: argparse.Namespace) -> None:
    held = run_fs(args, lambda fs: client.social.fingerprint(fs, args.user))
    print_fingerprint(held, mine=args.user is None, qr=args.qr or sys.stdout.isatty())
    if held.changed:
        sys.stdout.flush()
        warn(
            f"the PKI now names another identity key for {args.user} than this one: compare"
            f" fingerprints with them and run `pyrgos verify {args.user} FINGERPRINT`"
        )


def cmd_verify(args: argparse.Namespace) -> None:
    digits = " ".join(args.fingerprint)
    run_fs(args, lambda fs: client.social.verify(fs, args.user, digits))
    print(f"verified {args.user}'s identity key")


# -- secret links and publishing -------------------------------------------------------------

LINK_PASSWORD_ENV: Final = "PYRGOS_LINK_PASSWORD"


def _duration(text: str) -> int:
    from protocols.links import parse_duration

    try:
        return parse_duration(text)
    except MalformedInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _uses(text: str) -> int:
    from protocols.links import MAX_USES

    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_USES:
        raise argparse.ArgumentTypeError(f"not a number of uses from 1 to {MAX_USES}: {text!r}")
    return int(text)


def _new_link_password() -> str:
    """A new link's password: asked twice on a terminal, else from PYRGOS_LINK_PASSWORD."""
    if sys.stdin.isatty():
        first = getpass.getpass("Link password: ")
        if getpass.getpass("Repeat it: ") != first:
            raise UsageError("the two passwords differ")
        return first
    value = os.environ.get(LINK_PASSWORD_ENV)
    if value is None:
        raise UsageError(f"--password: no terminal to ask for it: set {LINK_PASSWORD_ENV}")
    return value


def cmd_link_create(args: argparse.Namespace) -> None:
    password = _new_link_password() if args.password else None
    url = run_fs(
        args,
        lambda fs: client.links.create_link(
            fs, args.path, node_url=args.node or fs.api.url, password=password,
            expires=args.expires, max_uses=args.max_uses, writable=args.writable,
            rotate=client.sharing.rotate,
        ),
    )  # fmt: skip
    print(url)


def cmd_link_list(args: argparse.Namespace) -> None:
    records = run_fs(args, client.links.list_links)
    for record in records:
        expiry = "never" if record.expiry is None else _format_time(record.expiry)
        uses = "unlimited" if record.max_uses is None else str(record.max_uses)
        print(
            f"{record.id}  {record.path}  expires {expiry}  uses {uses}"
            f"  {'writable' if record.writable else 'read-only'}"
            f"  {'password' if record.password else 'no password'}"
        )
    if not records:
        print("no links")


def cmd_link_revoke(args: argparse.Namespace) -> None:
    record = run_fs(
        args, lambda fs: client.links.revoke_link(fs, args.id, rotate=client.sharing.rotate)
    )
    print(f"revoked link {args.id}" + ("" if record is None else f" to {record.path}"))


async def _open_link(api: NodeApi, url: LinkUrl) -> FileSystem:
    """The link's item as `/link`: with PYRGOS_LINK_PASSWORD if set; a link that needs a
    password it was not given asks for it on a terminal."""
    password = os.environ.get(LINK_PASSWORD_ENV)
    try:
        return await client.links.link_filesystem(api, url, password)
    except AuthFailed as exc:
        if password is not None or not sys.stdin.isatty():
            hint = "" if password is not None else f": set {LINK_PASSWORD_ENV}"
            raise AuthFailed(exc.message + hint) from None
    import trio

    password = await trio.to_thread.run_sync(getpass.getpass, "Link password: ")
    return await client.links.link_filesystem(api, url, password)


def run_link(url: str, action: Callable[[FileSystem], Awaitable[Any]]) -> Any:
    """Run `action` on a link's item, through the node the link names; no login needed."""
    from protocols.links import parse_url

    parsed = parse_url(url)

    async def run() -> Any:
        async with client.NodeApi(parsed.node) as api:
            return await _act(action, await _open_link(api, parsed))

    return trio_run(run)


def cmd_get_link(args: argparse.Namespace) -> None:
    local = Path(args.local or ".")
    into_folder = local.is_dir()
    remote = f"/{client.links.LINK_NAME}"

    async def action(fs: FileSystem) -> int:
        props = await fs.stat(remote)
        name = check_file_name(props.name)
        target = local / name if into_folder else local
        if props.is_dir:
            total = await client.tree_size(fs, remote)
            with progress_bar(total, f"get {name}") as progress:
                skipped = await client.get_tree(fs, remote, target, progress)
        else:
            with progress_bar(props.size, f"get {name}") as progress:
                await client.get_file(fs, remote, target, progress, props.size)
            skipped = 0
        print(f"saved {target}")
        return skipped

    skipped = run_link(args.url, action)
    if skipped:
        warn(_unreadable(skipped, "the link's folder") + "; the download is incomplete")
        raise SystemExit(EXIT_INCOMPLETE)


def cmd_cat_link(args: argparse.Namespace) -> None:
    run_link(args.url, lambda fs: _cat(fs, f"/{client.links.LINK_NAME}"))


def cmd_put_link(args: argparse.Namespace) -> None:
    top = f"/{client.links.LINK_NAME}"
    remote = top if args.path is None else f"{top}/{args.path.strip('/')}"

    def run(action: Callable[[FileSystem], Awaitable[None]]) -> None:
        async def checked(fs: FileSystem) -> None:
            if (await fs.capability(top)).write_key is None:
                raise Denied("this link is read-only: its owner made it without --writable")
            await action(fs)

        run_link(args.url, checked)

    _upload(Path(args.local), remote, run)


def cmd_publish(args: argparse.Namespace) -> None:
    path = run_fs(args, lambda fs: client.links.publish(fs, args.path))
    print(f"published {path}: anyone can read it, without an account (`pyrgos get {path} .`)")


def cmd_unpublish(args: argparse.Namespace) -> None:
    path = run_fs(
        args, lambda fs: client.links.unpublish(fs, args.path, rotate=client.sharing.rotate)
    )
    print(f"unpublished {path}")


# -- sharing commands ------------------------------------------------------------------------


def cmd_share(args: argparse.Namespace) -> None:
    item = run_fs(args, lambda fs: client.sharing.share(fs, args.path, args.user, write=args.write))
    access = "read and write" if item.writable else "read"
    print(f"shared {item.path} with {args.user} ({access})")


def cmd_unshare(args: argparse.Namespace) -> None:
    missing = run_fs(args, lambda fs: client.sharing.unshare(fs, args.path, args.user))
    if missing:
        print(f"{args.path} is no longer shared with {args.user}")
    else:
        print(f"{args.user} no longer has access to {args.path}; its keys were rotated")
    _warn_not_rotated(missing)


def cmd_shared(args: argparse.Namespace) -> None:
    result = run_fs(args, client.sharing.shared)
    for name, item in result.mine:
        access = "read-write" if item.writable else "read-only"
        print(f"{item.path}  shared with {name}  {access}  since {_format_time(item.since)}")
    for name, item in result.with_me:
        access = "read-write" if item.writable else "read-only"
        print(f"{item.path}  shared by {name}  {access}  since {_format_time(item.since)}")
    if not (result.mine or result.with_me):
        print("nothing shared")
    sys.stdout.flush()
    for problem in result.problems:
        warn(problem)


# -- the local test swarm (node/swarm.py) ----------------------------------------------------


def _join_config(args: argparse.Namespace) -> NodeConfig:
    from dataclasses import replace

    from node import swarm

    config = swarm.join_config(args.join)
    return replace(
        config,
        api=args.api or config.api,
        listen=args.listen or config.listen,
        quota=parse_size(args.quota),
    )


def _count(text: str, what: str, least: int, most: int) -> int:
    if not text.isascii() or not text.isdigit() or not least <= int(text) <= most:
        raise argparse.ArgumentTypeError(f"not a number of {what} from {least} to {most}: {text!r}")
    return int(text)


def _nodes(text: str) -> int:
    from node.swarm import MAX_NODES  # the node side: imported by `swarm` commands only

    return _count(text, "nodes", 1, MAX_NODES)


def _users(text: str) -> int:
    from node.swarm import MAX_USERS

    return _count(text, "users", 0, MAX_USERS)


@contextmanager
def swarm_progress() -> Iterator[Callable[[str, int, int], None] | None]:
    """A bar per stage (starting nodes, signing up users) on a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        yield report


def _users_cell(users: list[str]) -> str:
    shown = " ".join(users[:4])
    return f"{shown} … ({len(users)})" if len(users) > 4 else shown or "-"


def _swarm_dir(args: argparse.Namespace) -> Path:
    """`--dir`, else node/swarm.py's default (found here: the parser imports no node side)."""
    from node import swarm

    directory: Path = args.dir or swarm.default_dir()
    return directory


def cmd_swarm_up(args: argparse.Namespace) -> None:
    from node import swarm

    swarm.check_counts(args.nodes, args.users)
    directory = _swarm_dir(args)
    with swarm_progress() as progress:
        started = trio_run(swarm.up, directory, args.nodes, args.users, progress)
    print(f"{'name':6} {'peer id':52} {'API URL':24} users")
    for node in started.nodes:
        users = _users_cell(started.users_of(node))
        print(f"{node.name:6} {node.peer_id:52} {node.api:24} {users}")
    where = directory.resolve()
    print(f"swarm file: {where / swarm.SWARM_FILE}")
    if started.users:
        print(f"passwords: {where / swarm.PASSWORDS_FILE} (mode 0600)")
        print(f'act as a user: eval "$(pyrgos swarm env {started.users[0].name} --dir {where})"')
    print(f"stop it: pyrgos swarm down --dir {where}")


def cmd_swarm_status(args: argparse.Namespace) -> None:
    import json

    from node import swarm

    directory = _swarm_dir(args)
    current, nodes = trio_run(swarm.status, directory)
    if args.json:
        shown = [
            {
                "name": n.node.name, "state": n.state, "peer_id": n.node.peer_id,
                "api": n.node.api, "p2p": n.node.p2p, "pid": n.node.pid,
                "pki_head": n.pki_head, "users": n.users,
            }
            for n in nodes
        ]  # fmt: skip
        print(json.dumps({"state": current.state, "nodes": shown}, indent=2))
        return
    print(f"{'name':6} {'state':13} {'peer id':52} {'API URL':24} {'PKI head':8} users")
    for n in nodes:
        head = "-" if n.pki_head is None else str(n.pki_head)
        print(
            f"{n.node.name:6} {n.state:13} {n.node.peer_id:52} {n.node.api:24} {head:>8}"
            f" {_users_cell(n.users)}"
        )
    where = directory.resolve()
    if current.state == "down":
        print(f"the swarm was stopped: `pyrgos swarm up --dir {where}` starts a new one")
    else:
        print(f"PKI node: {current.pki.p2p}")
        print(f"join it: pyrgos node init --join {where / swarm.SWARM_FILE} --home DIR")
        if current.users:
            print(f'act as a user: eval "$(pyrgos swarm env USER --dir {where})"')


def cmd_swarm_down(args: argparse.Namespace) -> None:
    from node import swarm

    result = trio_run(swarm.down, _swarm_dir(args))
    if result.stopped == 0:
        print("no node of the swarm was running; it is marked down")
        return
    nodes = "node" if result.stopped == 1 else "nodes"
    killed = f" ({result.killed} needed SIGKILL)" if result.killed else ""
    print(f"stopped {result.stopped} {nodes}{killed}")


def cmd_swarm_env(args: argparse.Namespace) -> None:
    import shlex

    from node import swarm

    current = swarm.load(_swarm_dir(args))
    for key, value in swarm.user_env(current, args.user).items():
        print(f"export {key}={shlex.quote(value)}")


def _agent_socket() -> str:
    from node.cli import _agent

    path = _agent.socket_path()
    if path is None:
        raise UsageError(
            "no private directory for the agent's socket: $XDG_RUNTIME_DIR (or $TMPDIR, or "
            f"/tmp)/pyrgos-{os.getuid()} must be a directory only you can enter"
        )
    return path


def cmd_agent_serve(args: argparse.Namespace) -> None:
    from node.cli import _agent

    _agent.serve(_agent_socket())


def cmd_agent_status(args: argparse.Namespace) -> None:
    from node.cli import _agent

    path = _agent_socket()
    said = _agent.status(path)
    if said is None:
        if os.environ.get(_agent.AGENT_ENV) == "off":
            print(f"no agent: {_agent.AGENT_ENV}=off, every command runs in its own process")
        else:
            print(f"no agent at {path}: the next command that uses one starts it")
        return
    print(f"agent {said.get('pid')} at {path}: {said.get('served')} requests served,"
          f" up {said.get('age')} s")  # fmt: skip


def cmd_agent_stop(args: argparse.Namespace) -> None:
    from node.cli import _agent

    path = _agent_socket()
    said = _agent.stop(path)
    print(f"stopped agent {said['pid']}" if said else f"no agent at {path}")


def add_agent_commands(commands: argparse._SubParsersAction[Parser]) -> None:
    """`pyrgos agent serve|status|stop`."""
    group = commands.add_parser(
        "agent",
        help="the command agent: a background process with pyrgos loaded, from which commands "
        "start in milliseconds",
        description="the command agent: a background process with pyrgos loaded, which runs "
        "each file and social command in a process forked from it, so that the command starts "
        "in milliseconds. The first such command starts it; it exits after "
        "10 idle minutes, or an hour. It holds no key: each command reads its session "
        "as it would alone. PYRGOS_AGENT=off runs every command in its own process.",
    ).add_subparsers(dest="agent_command", metavar="AGENT-COMMAND", required=True)
    group.add_parser(
        "serve", help="be the agent, in the foreground (what the first command starts)"
    ).set_defaults(run=cmd_agent_serve)
    group.add_parser(
        "status", help="whether an agent runs: its pid, requests served, age"
    ).set_defaults(run=cmd_agent_status)
    group.add_parser(
        "stop", help="stop the agent (the next command starts a new one)"
    ).set_defaults(run=cmd_agent_stop)


def add_swarm_commands(commands: argparse._SubParsersAction[Parser]) -> None:
    """`pyrgos swarm up|status|down|env`."""
    group = commands.add_parser(
        "swarm",
        help="a local test swarm: a PKI node and nodes that follow it, on 127.0.0.1",
        description="a local test swarm: real node processes in test mode on 127.0.0.1",
    ).add_subparsers(dest="swarm_command", metavar="SWARM-COMMAND", required=True)

    def swarm_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--dir",
            type=Path,
            default=None,  # node/swarm.py's default_dir(), found by _swarm_dir
            help="the swarm's directory (default: $PYRGOS_SWARM or ~/.pyrgos-swarm)",
        )
        return sub

    up = swarm_command(
        "up",
        "start a PKI node and NODES-1 nodes that follow it, sign up USERS users round-robin "
        "across them, and print who is where",
    )
    up.add_argument("--nodes", type=_nodes, required=True, metavar="N")
    up.add_argument(
        "--users",
        type=_users,
        default=0,
        metavar="U",
        help="users user1…userU, with random passwords kept in DIR/passwords.json (0600)",
    )
    up.set_defaults(run=cmd_swarm_up)
    status = swarm_command("status", "each node: up or down, peer id, API URL, PKI head, users")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=cmd_swarm_status)
    swarm_command(
        "down", "stop every node of the swarm (SIGTERM, then SIGKILL after 15 s)"
    ).set_defaults(run=cmd_swarm_down)
    env = swarm_command(
        "env",
        'print the exports that make this shell act as swarm user USER: eval "$(pyrgos swarm '
        'env USER)"',
    )
    env.add_argument("user", metavar="USER")
    env.set_defaults(run=cmd_swarm_env)


# -- the parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pyrgos",
        description="pyrgos: end-to-end encrypted peer-to-peer storage. Files are encrypted on "
        "this machine; the node stores only padded ciphertext under random labels.",
        epilog="environment: PYRGOS_HOME (node home, default ~/.pyrgos), PYRGOS_NODE (API URL), "
        "PYRGOS_PROFILE (client state, default ~/.config/pyrgos), PYRGOS_PASSWORD, "
        "PYRGOS_NEW_PASSWORD, PYRGOS_LINK_PASSWORD, PYRGOS_AGENT (off: no command agent)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,  # client.default_profile(), filled in by main
        help="client state directory (default: $PYRGOS_PROFILE or ~/.config/pyrgos)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    node = commands.add_parser("node", help="run and manage a node").add_subparsers(
        dest="node_command", metavar="NODE-COMMAND", required=True
    )

    def home_command(
        group: argparse._SubParsersAction[Parser], name: str, help_text: str
    ) -> argparse.ArgumentParser:
        """A command run on this machine's node, found by its home directory."""
        sub = group.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--home",
            type=Path,
            default=None,  # default_home(), filled in by main
            help="node home directory (default: $PYRGOS_HOME or ~/.pyrgos)",
        )
        return sub

    def node_command(name: str, help_text: str) -> argparse.ArgumentParser:
        return home_command(node, name, help_text)

    init = node_command("init", "create a node: its key, its settings, its database")
    init.add_argument(
        "--api",
        default=None,
        metavar="HOST:PORT",
        help=f"where the HTTP API listens (default {DEFAULT_API}; port 0 picks a free one)",
    )
    init.add_argument(
        "--test-mode", action="store_true", help="accept the small KDF profile (tests only)"
    )
    init.add_argument(
        "--quota",
        default="1GiB",
        metavar="SIZE",
        help="storage quota per user, e.g. 500MiB (default 1GiB)",
    )
    init.add_argument(
        "--listen",
        default=None,
        metavar="MULTIADDR",
        help=f"where the node listens for other nodes (default {DEFAULT_LISTEN})",
    )
    init.add_argument(
        "--max-daily-signups",
        type=_signups_a_day,
        default=DEFAULT_MAX_DAILY_SIGNUPS,
        metavar="N",
        help=f"signups this node accepts a day; 0 closes signup (default "
        f"{DEFAULT_MAX_DAILY_SIGNUPS}); the PKI node also takes at most N new names a day "
        "from each other node",
    )
    init.add_argument(
        "--max-source-signups",
        type=_signups_a_day,
        default=DEFAULT_MAX_SOURCE_SIGNUPS,
        metavar="N",
        help=f"signups a day from one client address (default {DEFAULT_MAX_SOURCE_SIGNUPS})",
    )
    init.add_argument(
        "--signup-token",
        metavar="TOKEN",
        help="signup must present this token (pyrgos signup --signup-token); its holders are "
        "not limited per address",
    )
    role = init.add_mutually_exclusive_group()
    role.add_argument(
        "--pki-root",
        action="store_true",
        help="this node orders the PKI log (the default for a lone node)",
    )
    role.add_argument(
        "--pki",
        default="",
        metavar="MULTIADDR",
        help="mirror the PKI of the node at this full multiaddr (/ip4/…/tcp/…/p2p/ID)",
    )
    role.add_argument(
        "--join",
        type=Path,
        metavar="SWARMFILE",
        help="follow the PKI node of the running local swarm of SWARMFILE (`pyrgos swarm up`): "
        "test mode, on 127.0.0.1, ports the OS picks",
    )
    init.add_argument("--exist-ok", action="store_true", help="do nothing if already initialised")
    init.set_defaults(run=cmd_node_init)
    node_command("run", "run the node in the foreground until Ctrl-C").set_defaults(
        run=cmd_node_run
    )
    info = node_command("info", "show the node's id, API URL and settings")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(run=cmd_node_info)
    node_command("gc", "delete blocks nothing points to any more").set_defaults(run=cmd_node_gc)
    node_mirror = node.add_parser(
        "mirror",
        help="copy other users' data to this node and keep it up to date",
        description="copy other users' data to this node and keep it up to date",
    ).add_subparsers(dest="mirror_command", metavar="MIRROR-COMMAND", required=True)

    def mirror_command(name: str, help_text: str) -> argparse.ArgumentParser:
        return home_command(node_mirror, name, help_text)

    mirror_add = mirror_command("add", "mirror USER, with the token `pyrgos mirror token` gives")
    mirror_add.add_argument("user", metavar="USER")
    mirror_add.add_argument("--token", metavar="TOKEN", help="or $PYRGOS_MIRROR_TOKEN")
    mirror_add.set_defaults(run=cmd_node_mirror_add)
    mirror_list = mirror_command("list", "the users this node mirrors: state, last sync, size, lag")
    mirror_list.add_argument("--json", action="store_true", help="print JSON")
    mirror_list.set_defaults(run=cmd_node_mirror_list)
    mirror_remove = mirror_command("remove", "stop mirroring USER (GC then frees the copy)")
    mirror_remove.add_argument("user", metavar="USER")
    mirror_remove.set_defaults(run=cmd_node_mirror_remove)

    pki = commands.add_parser("pki", help="look at the PKI: who is who, and where").add_subparsers(
        dest="pki_command", metavar="PKI-COMMAND", required=True
    )
    lookup = pki.add_parser("lookup", help="a user's identity key hash, home node and expiry")
    lookup.add_argument("user", metavar="USER")
    lookup.add_argument("--json", action="store_true", help="print JSON")
    lookup.set_defaults(run=cmd_pki_lookup)
    status = pki.add_parser("status", help="the node's PKI head, source, last sync, refusals")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=cmd_pki_status)

    def client_command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=help_text)

    mirror = commands.add_parser(
        "mirror",
        help="have other nodes mirror your data",
        description="have other nodes "
        "mirror your data: readers fall back to a mirror when your home node is down",
    ).add_subparsers(dest="mirror_command", metavar="MIRROR-COMMAND", required=True)
    mirror.add_parser(
        "token", help="print the token a node needs to mirror you (`pyrgos node mirror add`)"
    ).set_defaults(run=cmd_mirror_token)
    publish_mirrors = mirror.add_parser(
        "publish", help="list NODEs (node ids) as your mirrors in your PKI claim; none clears it"
    )
    publish_mirrors.add_argument("nodes", metavar="NODE", nargs="*")
    publish_mirrors.set_defaults(run=cmd_mirror_publish)
    migrate = client_command(
        "migrate",
        "make NODE, a node that mirrors you and is caught up, your home; your old home "
        "becomes a mirror",
    )
    migrate.add_argument("--to", required=True, metavar="NODE", help="the new home's node id")
    migrate.set_defaults(run=cmd_migrate)

    def with_password(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password(s) from standard input, one per line",
        )
        return sub

    signup = with_password(client_command("signup", "create an account homed on the node"))
    signup.add_argument("user", metavar="USER")
    signup.add_argument(
        "--signup-token",
        metavar="TOKEN",
        help="the node's signup token, if it needs one (or $PYRGOS_SIGNUP_TOKEN)",
    )
    signup.set_defaults(run=cmd_signup)
    login = with_password(client_command("login", "log in from this device"))
    login.add_argument("user", metavar="USER")
    login.set_defaults(run=cmd_login)
    logout = client_command("logout", "end this device's session at the node and forget it")
    logout.add_argument(
        "--all", action="store_true", help="end every session of the user, on every device"
    )
    logout.set_defaults(run=cmd_logout)
    client_command("whoami", "show who is logged in, and where").set_defaults(run=cmd_whoami)
    with_password(client_command("passwd", "change the password (current, then new)")).set_defaults(
        run=cmd_passwd
    )

    put = client_command("put", "upload a file or a folder")
    put.add_argument("local", metavar="LOCAL")
    put.add_argument("remote", metavar="REMOTE")
    put.set_defaults(run=cmd_put)
    get = client_command("get", "download a file or a folder")
    get.add_argument("remote", metavar="REMOTE")
    get.add_argument("local", metavar="LOCAL")
    get.set_defaults(run=cmd_get)
    cat = client_command("cat", "write a file (or a byte range of it) to standard output")
    cat.add_argument("remote", metavar="REMOTE")
    cat.add_argument("--offset", type=int, default=0, metavar="N", help="first byte (default 0)")
    cat.add_argument("--length", type=int, default=None, metavar="N", help="bytes to write")
    cat.set_defaults(run=cmd_cat)
    ls = client_command("ls", "list a directory")
    ls.add_argument("remote", metavar="REMOTE", nargs="?", default="")
    ls.add_argument("-l", dest="long", action="store_true", help="show kind, size and time")
    ls.add_argument("-a", dest="all", action="store_true", help='also show names starting with "."')
    ls.set_defaults(run=cmd_ls)
    mkdir = client_command("mkdir", "make a directory")
    mkdir.add_argument("remote", metavar="REMOTE")
    mkdir.add_argument("-p", dest="parents", action="store_true", help="make parents as needed")
    mkdir.set_defaults(run=cmd_mkdir)
    rm = client_command("rm", "remove a file or directory")
    rm.add_argument("remote", metavar="REMOTE")
    rm.add_argument("-r", dest="recursive", action="store_true", help="remove directories")
    rm.add_argument(
        "--bad",
        action="store_true",
        help="remove the entries of the directory REMOTE that cannot be read (those `ls -l` skips)",
    )
    rm.set_defaults(run=cmd_rm)
    mv = client_command("mv", "rename or move a file or directory")
    mv.add_argument("source", metavar="SRC")
    mv.add_argument("target", metavar="DST")
    mv.set_defaults(run=cmd_mv)
    client_command("space", "show usage and quota").set_defaults(run=cmd_space)

    def user_command(
        name: str, help_text: str, run: Callable[[argparse.Namespace], None]
    ) -> argparse.ArgumentParser:
        sub = client_command(name, help_text)
        sub.add_argument("user", metavar="USER")
        sub.set_defaults(run=run)
        return sub

    user_command(
        "follow",
        "ask USER to let you follow them: once they accept, you read what they share with you",
        cmd_follow,
    )
    client_command(
        "requests",
        "list the follow requests waiting for your answer (and pick up the answers to yours)",
    ).set_defaults(run=cmd_requests)
    accept = user_command(
        "accept", "let USER follow you: they can then read what you share with them", cmd_accept
    )
    accept.add_argument(
        "--follow-back", action="store_true", help="also ask to follow USER yourself"
    )
    user_command("reject", "decline USER's follow request (they are told)", cmd_reject)
    client_command("followers", "list who follows you").set_defaults(run=cmd_followers)
    client_command(
        "following", "list whom you follow, and the requests they have not answered yet"
    ).set_defaults(run=cmd_following)
    user_command(
        "unfollow",
        "stop following USER (forgets their folder for you; they are not told)",
        cmd_unfollow,
    )
    user_command(
        "remove-follower",
        "stop USER following you: revokes what you shared with them and deletes /YOU/shared/USER",
        cmd_remove_follower,
    )
    fingerprint = client_command(
        "fingerprint",
        "show your safety number, or the one of the key you hold for USER: compare it with "
        "theirs in person or over a channel you trust",
    )
    fingerprint.add_argument("user", metavar="USER", nargs="?", default=None)
    fingerprint.add_argument(
        "--qr", action="store_true", help="print its QR code even when output is not a terminal"
    )
    fingerprint.set_defaults(run=cmd_fingerprint)
    verify = user_command(
        "verify",
        "record USER's current identity key as verified, if FINGERPRINT (what `pyrgos "
        "fingerprint` shows them) matches it; needed after their key changed",
        cmd_verify,
    )
    verify.add_argument("fingerprint", metavar="FINGERPRINT", nargs="+",
                        help="the 60 digits; spaces are ignored")  # fmt: skip

    link = commands.add_parser(
        "link",
        help="secret links: a URL that lets anyone with it read (or write) an item, without an "
        "account",
        description="secret links: the URL's part after # is the key; it never reaches a node",
    ).add_subparsers(dest="link_command", metavar="LINK-COMMAND", required=True)
    create = link.add_parser(
        "create",
        help="make a secret link to PATH and print its URL",
        description="make a secret link to PATH and print its URL; the home node enforces "
        "its expiry and uses",
    )
    create.add_argument("path", metavar="PATH")
    create.add_argument(
        "--password",
        action="store_true",
        help=f"protect the link with a password (asked twice on a terminal, else "
        f"${LINK_PASSWORD_ENV}); readers need both the URL and it",
    )
    create.add_argument(
        "--expires", type=_duration, metavar="DURATION", help="expire after DURATION: 30m, 12h, 7d"
    )
    create.add_argument("--max-uses", type=_uses, metavar="N", help="work at most N times")
    create.add_argument(
        "--writable",
        action="store_true",
        help="hand out write access to PATH and what is below it, nothing above it "
        "(`pyrgos put-link`); the item's keys are rotated once to give it a writer of its own",
    )
    create.add_argument(
        "--node",
        metavar="URL",
        help="the node URL the link names (default: the node this client talks to)",
    )
    create.set_defaults(run=cmd_link_create)
    link.add_parser(
        "list", help="list your links: id, path, expiry, uses allowed, write access, password"
    ).set_defaults(run=cmd_link_list)
    revoke = link.add_parser("revoke", help="revoke the link ID (as `pyrgos link list` shows)")
    revoke.add_argument("id", metavar="ID")
    revoke.set_defaults(run=cmd_link_revoke)
    get_link = client_command(
        "get-link",
        "download what a secret link holds (no account needed); a link with a password asks "
        f"for it, or reads ${LINK_PASSWORD_ENV}",
    )
    get_link.add_argument("url", metavar="URL")
    get_link.add_argument(
        "local", metavar="LOCAL", nargs="?", default=None, help="where (default: here)"
    )
    get_link.set_defaults(run=cmd_get_link)
    cat_link = client_command(
        "cat-link", "write the file a secret link holds to standard output (no account needed)"
    )
    cat_link.add_argument("url", metavar="URL")
    cat_link.set_defaults(run=cmd_cat_link)
    put_link = client_command(
        "put-link",
        "upload a file or folder through a writable secret link (no account needed): into the "
        "linked folder, or over the linked file",
    )
    put_link.add_argument("url", metavar="URL")
    put_link.add_argument("local", metavar="LOCAL")
    put_link.add_argument(
        "path",
        metavar="PATH",
        nargs="?",
        default=None,
        help="where inside the linked folder (default: LOCAL's name in it)",
    )
    put_link.set_defaults(run=cmd_put_link)
    publish = client_command(
        "publish", "make PATH readable by anyone, without an account: `pyrgos get /YOU/PATH`"
    )
    publish.add_argument("path", metavar="PATH")
    publish.set_defaults(run=cmd_publish)
    unpublish = client_command("unpublish", "stop publishing PATH")
    unpublish.add_argument("path", metavar="PATH")
    unpublish.set_defaults(run=cmd_unpublish)

    share = client_command(
        "share",
        "share your file or folder PATH with the follower USER (read-only, or with --write "
        "writable): they see it at its path under your name, e.g. /YOU/photos",
    )
    share.add_argument("path", metavar="PATH")
    share.add_argument("user", metavar="USER")
    share.add_argument(
        "--write", action="store_true", help="let USER change the item (and nothing else)"
    )
    share.set_defaults(run=cmd_share)
    unshare = client_command(
        "unshare",
        "stop sharing PATH with USER: its keys are rotated, so what USER held no longer opens "
        "it; everyone else who shares it keeps access",
    )
    unshare.add_argument("path", metavar="PATH")
    unshare.add_argument("user", metavar="USER")
    unshare.set_defaults(run=cmd_unshare)
    client_command(
        "shared", "list what you share with whom, and what others share with you"
    ).set_defaults(run=cmd_shared)
    add_swarm_commands(commands)
    add_agent_commands(commands)
    return parser


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error in a (nested) exception group that pyrgos reports, else its first."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending[:0] = error.exceptions
        else:
            leaves.append(error)
    reported = (PyrgosError, UsageError, OSError, KeyboardInterrupt)
    return next((e for e in leaves if isinstance(e, reported)), leaves[0])


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> None:
    """`pyrgos ARGV`, parsed by `parser` (the command agent builds one for all its commands)."""
    args = (parser or build_parser()).parse_args(argv)  # --help, usage errors end here, cheaply
    # The parser holds no value from the environment: the defaults that depend on it are
    # filled in here.
    if args.profile is None:
        args.profile = client.default_profile()
    if getattr(args, "home", False) is None:
        args.home = default_home()
    from node import heap
    from protocols import crypto

    crypto.require_system_randomness()  # never a user's keys from a simulation's seed
    heap.tune(heap.CLIENT_MMAP_THRESHOLD, heap.CLIENT_TRIM_THRESHOLD, heap.CLIENT_ARENAS)
    try:
        try:
            args.run(args)
        except BaseExceptionGroup as group:  # from a trio nursery: report what it stands for
            raise _first_leaf(group) from None
    except UsageError as exc:
        fail(str(exc), 2)
    except PyrgosError as exc:
        fail(exc.message, next((c for t, c in EXIT_CODES.items() if isinstance(exc, t)), 1))
    except BrokenPipeError:  # the reader went away (`pyrgos cat F | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(141) from None  # as a shell reports a command killed by SIGPIPE
    except OSError as exc:
        fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "), 1)
    except KeyboardInterrupt:
        fail("interrupted", 130)
