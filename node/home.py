"""A node's home directory: its settings, its persisted identity key, its database.

Layout: `node.toml` (settings), `node.key` (Ed25519, libp2p format, mode 0600), `db/` (the
LevelDB), `admin-token` (authorises maintenance calls, mode 0600), `signup-token` (when signup
needs one, mode 0600), `api` (the API URL, present while the node runs), `ready` (the running
node's id, URL, libp2p addresses and process id, once it serves and has published its record).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from protocols.errors import MalformedInput, NotFound, PyrgosError

DEFAULT_API: Final = "127.0.0.1:8000"
DEFAULT_QUOTA: Final = 1024**3  # 1 GiB per user
DEFAULT_GC_INTERVAL: Final = 3600
DEFAULT_LISTEN: Final = "/ip4/0.0.0.0/tcp/4001"  # seconds between scheduled collections
# Signups a day (as NodeSettings): a home server's users sign up by the handful, and a
# stranger who finds the node cannot fill the PKI with names.
DEFAULT_MAX_DAILY_SIGNUPS: Final = 100
DEFAULT_MAX_SOURCE_SIGNUPS: Final = 10
READY_VERSION: Final = 1
MAX_READY_FILE: Final = 64 * 1024  # a ready file names at most a few dozen addresses
UNITS: Final = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def default_home() -> Path:
    return Path(os.environ.get("PYRGOS_HOME") or Path.home() / ".pyrgos")


def parse_size(text: str) -> int:
    """'1GiB', '500M', '1048576' -> bytes."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:].isalpha() else ""
    number = value[: len(value) - len(unit)]
    if unit not in UNITS or not number.isdigit():
        raise MalformedInput(f"not a size: {text!r} (examples: 1GiB, 500MiB, 1048576)")
    return int(number) * UNITS[unit]


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise MalformedInput(f"not HOST:PORT: {text!r} (example: 127.0.0.1:8000)")
    return host.strip("[]"), int(port)


def check_multiaddr(text: str, *, peer: bool = False) -> str:
    """Refuse what is not a TCP multiaddr (with `/p2p/ID` when `peer`), with an example."""
    from multiaddr import Multiaddr

    example = "/ip4/127.0.0.1/tcp/4001" + ("/p2p/12D3KooW…" if peer else "")
    try:
        parsed = Multiaddr(text)
        parsed.value_for_protocol("tcp")
        if peer:
            parsed.value_for_protocol("p2p")
    except Exception as exc:  # multiaddr raises several unrelated types
        raise MalformedInput(f"not a multiaddr: {text!r} (example: {example})") from exc
    return text


@dataclass(frozen=True)
class NodeConfig:
    api: str = DEFAULT_API
    test_mode: bool = False
    quota: int = DEFAULT_QUOTA
    gc_interval: int = DEFAULT_GC_INTERVAL
    listen: str = DEFAULT_LISTEN
    pki: str = ""  # the PKI node's full multiaddr (…/p2p/ID); empty: this node is the PKI root
    max_daily_signups: int = DEFAULT_MAX_DAILY_SIGNUPS
    max_source_signups: int = DEFAULT_MAX_SOURCE_SIGNUPS

    @property
    def pki_root(self) -> bool:
        return not self.pki


def _check_limits(config: NodeConfig) -> None:
    for name in ("max_daily_signups", "max_source_signups"):
        if getattr(config, name) < 0:
            raise MalformedInput(f"{name} is a number of signups a day, 0 or more")


@dataclass(frozen=True)
class Ready:
    """What a running node says of itself once it serves: the `ready` file."""

    node_id: str
    api: str
    addrs: tuple[str, ...]  # full multiaddrs (…/p2p/ID)
    pid: int

    def to_json(self) -> str:
        value = {
            "version": READY_VERSION,
            "node_id": self.node_id,
            "api": self.api,
            "addrs": list(self.addrs),
            "pid": self.pid,
        }
        return json.dumps(value, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> Ready:
        """Checked: a file that is not exactly this (the version, every type) is refused."""
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise MalformedInput(f"{where} is not JSON: {exc}") from exc
        keys = {"version", "node_id", "api", "addrs", "pid"}
        if not isinstance(value, dict) or set(value) != keys:
            raise MalformedInput(f"{where} is not a ready file (keys: {', '.join(sorted(keys))})")
        if type(value["version"]) is not int or value["version"] != READY_VERSION:
            raise MalformedInput(f"{where}: unknown version {value['version']!r}")
        addrs = value["addrs"]
        pid = value["pid"]
        if not (
            isinstance(value["node_id"], str)
            and isinstance(value["api"], str)
            and isinstance(addrs, list)
            and len(addrs) <= 64
            and all(isinstance(a, str) for a in addrs)
            and type(pid) is int
            and pid > 0
        ):
            raise MalformedInput(f"{where}: a field has the wrong type")
        return cls(value["node_id"], value["api"], tuple(addrs), pid)


class NodeHome:
    """The files of one node."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def config_file(self) -> Path:
        return self.path / "node.toml"

    @property
    def key_file(self) -> Path:
        return self.path / "node.key"

    @property
    def db_path(self) -> Path:
        return self.path / "db"

    @property
    def api_file(self) -> Path:
        return self.path / "api"

    @property
    def ready_file(self) -> Path:
        return self.path / "ready"

    @property
    def token_file(self) -> Path:
        return self.path / "admin-token"

    @property
    def signup_token_file(self) -> Path:
        return self.path / "signup-token"

    @property
    def initialised(self) -> bool:
        return self.config_file.exists() and self.key_file.exists()

    def init(self, config: NodeConfig, signup_token: str = "") -> str:
        """Create the home; return the new node's id. With `signup_token`, signup needs it."""
        if self.initialised:
            raise PyrgosError(f"a node is already initialised in {self.path}")
        parse_host_port(config.api)
        _check_limits(config)
        if signup_token != signup_token.strip() or len(signup_token) > 256:
            raise MalformedInput("a signup token is at most 256 characters, without spaces around")
        check_multiaddr(config.listen)
        if config.pki:
            check_multiaddr(config.pki, peer=True)
        from libp2p.crypto.ed25519 import create_new_key_pair  # slow to import: only here
        from libp2p.identity_utils import save_identity

        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        save_identity(create_new_key_pair(), self.key_file)
        self.key_file.chmod(0o600)
        self._write_private(self.token_file, secrets.token_hex(32))
        if signup_token:
            self._write_private(self.signup_token_file, signup_token)
        lines = [
            "# pyrgos node settings",
            f"api = {json.dumps(config.api)}",
            f"test_mode = {'true' if config.test_mode else 'false'}",
            f"quota = {config.quota}",
            f"gc_interval = {config.gc_interval}",
            f"listen = {json.dumps(config.listen)}",
            f"pki = {json.dumps(config.pki)}",
            f"max_daily_signups = {config.max_daily_signups}",
            f"max_source_signups = {config.max_source_signups}",
        ]
        self.config_file.write_text("\n".join(lines) + "\n")
        return self.node_id()

    @staticmethod
    def _write_private(path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)

    def require(self) -> None:
        if not self.initialised:
            raise NotFound(f"no node in {self.path}: run `pyrgos node init` first")

    def config(self) -> NodeConfig:
        import tomllib  # only here: a command that reads no settings does without it

        self.require()
        try:
            raw = tomllib.loads(self.config_file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise MalformedInput(f"{self.config_file} is not valid TOML: {exc}") from exc
        config = NodeConfig(
            api=str(raw.get("api", DEFAULT_API)),
            test_mode=bool(raw.get("test_mode", False)),
            quota=int(raw.get("quota", DEFAULT_QUOTA)),
            gc_interval=int(raw.get("gc_interval", DEFAULT_GC_INTERVAL)),
            listen=str(raw.get("listen", DEFAULT_LISTEN)),
            pki=str(raw.get("pki", "")),
            max_daily_signups=int(raw.get("max_daily_signups", DEFAULT_MAX_DAILY_SIGNUPS)),
            max_source_signups=int(raw.get("max_source_signups", DEFAULT_MAX_SOURCE_SIGNUPS)),
        )
        parse_host_port(config.api)
        _check_limits(config)
        return config

    def node_id(self) -> str:
        from libp2p.identity_utils import load_identity  # slow to import: only here
        from libp2p.peer.id import ID

        self.require()
        key_pair = load_identity(self.key_file)
        return str(ID.from_pubkey(key_pair.public_key).to_base58())

    def admin_token(self) -> str:
        return self.token_file.read_text().strip()

    def signup_token(self) -> str:
        """The token signup must present, or "" when signup is open (within its limits)."""
        try:
            return self.signup_token_file.read_text().strip()
        except FileNotFoundError:
            return ""

    def write_ready(self, ready: Ready) -> None:
        """Written whole (a new file renamed into place): a reader never sees half of it."""
        written = self.ready_file.with_name("ready.tmp")
        written.write_text(ready.to_json())
        written.replace(self.ready_file)

    def ready(self) -> Ready | None:
        """What the running node wrote once ready, if any (it may have died since)."""
        try:
            with self.ready_file.open("rb") as source:
                text = source.read(MAX_READY_FILE + 1)
        except FileNotFoundError:
            return None
        if len(text) > MAX_READY_FILE:
            raise MalformedInput(f"{self.ready_file} is over {MAX_READY_FILE} bytes")
        return Ready.from_json(text.decode(errors="replace"), self.ready_file)

    def running_api(self) -> str | None:
        """The URL the running node wrote, if any."""
        try:
            return self.api_file.read_text().strip() or None
        except FileNotFoundError:
            return None
