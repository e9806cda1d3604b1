"""A client profile: where a device keeps its logged-in session (mode 0600).

The session file holds what the password unlocked (the login data) and the node's session
token, so commands need not ask for the password again; `logout` ends the session at the node
and deletes it. It never holds the password nor anything derived from it, so it cannot change
the password, and once the node has ended its session it cannot write.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from protocols.errors import Corrupted, MalformedInput, NotFound

if TYPE_CHECKING:  # the methods import what they use: `pyrgos --help` needs default_profile only
    from protocols.accounts import LoginData

SESSION_FILE: Final = "session.cbor"
SESSION_VERSION: Final = 2  # 1 held the password-derived login keys: such a file is refused
MAX_SESSION_FILE: Final = 16 * 1024


def default_profile() -> Path:
    return Path(os.environ.get("PYRGOS_PROFILE") or Path.home() / ".config" / "pyrgos")


@dataclass(frozen=True)
class SavedSession:
    node: str
    username: str
    data: LoginData
    token: bytes
    expiry: int


class Profile:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def session_file(self) -> Path:
        return self.path / SESSION_FILE

    def save(self, saved: SavedSession) -> None:
        import tempfile

        from protocols import cbor

        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = cbor.encode(
            {
                "v": SESSION_VERSION,
                "node": saved.node,
                "username": saved.username,
                "data": saved.data.to_cbor(),
                "token": saved.token,
                "expiry": saved.expiry,
            }
        )
        # mkstemp: a new 0600 file under a random name (O_EXCL), so nothing planted at a
        # predictable name can receive the session or redirect the write through a link.
        fd, temporary = tempfile.mkstemp(prefix=".session-", dir=self.path)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.session_file)
        except BaseException:
            os.unlink(temporary)
            raise

    def load(self) -> SavedSession:
        from protocols import cbor
        from protocols.accounts import LoginData

        try:
            value = cbor.decode(self.session_file.read_bytes(), limit=MAX_SESSION_FILE)
        except FileNotFoundError:
            raise NotFound(
                "not logged in: run `pyrgos login USER` or `pyrgos signup USER`"
            ) from None
        except MalformedInput as exc:
            raise MalformedInput(f"{self.session_file} is damaged: log in again") from exc
        if not isinstance(value, dict) or value.get("v") != SESSION_VERSION:
            raise MalformedInput(f"{self.session_file} is of an unknown version: log in again")
        try:
            token, expiry = value["token"], value["expiry"]
            if not isinstance(token, bytes) or not isinstance(expiry, int):
                raise TypeError
            return SavedSession(
                node=str(value["node"]),
                username=str(value["username"]),
                data=LoginData.from_cbor(value["data"]),
                token=token,
                expiry=expiry,
            )
        except (KeyError, TypeError, Corrupted) as exc:
            raise MalformedInput(f"{self.session_file} is damaged: log in again") from exc

    def clear(self) -> bool:
        try:
            self.session_file.unlink()
        except FileNotFoundError:
            return False
        return True
