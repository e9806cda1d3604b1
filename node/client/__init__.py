"""A user's session with a node: accounts and the encrypted filesystem (all crypto is here).

Each name is imported from its module when first used: a `pyrgos` command loads only what it
needs (the whole package, with trio and h11, is a tenth of a second of every start).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from node.client import _links as links
    from node.client import _sharing as sharing
    from node.client import _social as social
    from node.client import _typed as typed
    from node.client._api import HttpTransport, NodeApi, Route, Transport
    from node.client._blocks import BlockCache
    from node.client._fs import Contents, FileSystem, get_file, get_tree, put_tree, tree_size
    from node.client._mirrors import migrate, mirror_token, publish_mirrors
    from node.client._profile import Profile, SavedSession, default_profile
    from node.client._resolve import HomeResolver, Listing, Resolved, Resolver, Resolvers
    from node.client._session import (
        TEST_KDF_ENV,
        Session,
        change_password,
        login,
        login_keys,
        logout,
        reopen,
        resume,
        signup,
    )
    from node.client._trees import TreeRoot, TreeUpdate, WriterTree, commit_trees

_MODULES: Final = {"links": "_links", "sharing": "_sharing", "social": "_social", "typed": "_typed"}
_NAMES: Final = {
    "_api": ("HttpTransport", "NodeApi", "Route", "Transport"),
    "_blocks": ("BlockCache",),
    "_fs": ("Contents", "FileSystem", "get_file", "get_tree", "put_tree", "tree_size"),
    "_mirrors": ("migrate", "mirror_token", "publish_mirrors"),
    "_profile": ("Profile", "SavedSession", "default_profile"),
    "_resolve": ("HomeResolver", "Listing", "Resolved", "Resolver", "Resolvers"),
    "_session": (
        "TEST_KDF_ENV",
        "Session",
        "change_password",
        "login",
        "login_keys",
        "logout",
        "reopen",
        "resume",
        "signup",
    ),
    "_trees": ("TreeRoot", "TreeUpdate", "WriterTree", "commit_trees"),
}
_HOME: Final = {name: module for module, names in _NAMES.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value: Any = importlib.import_module(f"{__name__}.{_MODULES[name]}")
    elif name in _HOME:
        value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # the next use is a plain attribute
    return value


__all__ = [
    "TEST_KDF_ENV",
    "BlockCache",
    "Contents",
    "FileSystem",
    "HomeResolver",
    "HttpTransport",
    "Listing",
    "NodeApi",
    "Profile",
    "Resolved",
    "Resolver",
    "Resolvers",
    "Route",
    "SavedSession",
    "Session",
    "Transport",
    "TreeRoot",
    "TreeUpdate",
    "WriterTree",
    "change_password",
    "commit_trees",
    "default_profile",
    "get_file",
    "get_tree",
    "links",
    "login",
    "login_keys",
    "logout",
    "migrate",
    "mirror_token",
    "publish_mirrors",
    "put_tree",
    "reopen",
    "resume",
    "sharing",
    "signup",
    "social",
    "tree_size",
    "typed",
]
