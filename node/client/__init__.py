"""A user's session with a node: accounts and the encrypted filesystem (all crypto is here)."""

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
