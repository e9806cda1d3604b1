"""Where a path leads: its first component (a username) resolved into a capability to start
from, the route to its owner's data, and the names left to walk below it.

The filesystem knows no source of capabilities itself; a resolver does (the user's own home
today; shares and published items plug in as further resolvers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

from node.client._api import Route
from protocols.cryptree import Capability, Properties
from protocols.errors import NotFound

if TYPE_CHECKING:
    from node.client._session import Session


@dataclass(frozen=True)
class Listing:
    name: str
    is_dir: bool
    props: Properties | None = None


class Resolved(NamedTuple):
    """A capability to start from, the route of its owner, and the names below it."""

    cap: Capability
    route: Route
    names: list[str]


class Resolver(Protocol):
    """A source of starting points for paths."""

    async def resolve(self, username: str, names: list[str]) -> Resolved:
        """Where `/username/names…` starts; NotFound when this source knows nothing of it."""
        ...

    async def list_top(self, username: str) -> list[Listing] | None:
        """What `ls /username` shows when `/username` is no one directory (for another user:
        the top-level names of what they share); None when it is one (resolve it)."""
        ...


class HomeResolver:
    """The session user's own home: `/<me>/…`, and nothing else."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def _check(self, username: str) -> None:
        if username != self.session.username:
            raise NotFound(f"/{username} is not this user's home (/{self.session.username})")

    async def resolve(self, username: str, names: list[str]) -> Resolved:
        self._check(username)
        return Resolved(self.session.home, self.session.route, names)

    async def list_top(self, username: str) -> list[Listing] | None:
        self._check(username)
        return None


class Resolvers:
    """Several sources, asked in order: the first that does not answer NotFound wins."""

    def __init__(self, sources: Sequence[Resolver]) -> None:
        if not sources:
            raise ValueError("at least one resolver is needed")
        self.sources = list(sources)

    async def resolve(self, username: str, names: list[str]) -> Resolved:
        error: NotFound | None = None
        for source in self.sources:
            try:
                return await source.resolve(username, names)
            except NotFound as exc:
                error = error or exc
        assert error is not None
        raise error

    async def list_top(self, username: str) -> list[Listing] | None:
        error: NotFound | None = None
        for source in self.sources:
            try:
                return await source.list_top(username)
            except NotFound as exc:
                error = error or exc
        assert error is not None
        raise error
