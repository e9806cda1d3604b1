"""A user's session with a node: accounts and the encrypted filesystem (all crypto is here)."""

from node.client import _social as social
from node.client._api import NodeApi
from node.client._fs import Contents, FileSystem, Listing, get_file, get_tree, put_tree, tree_size
from node.client._profile import Profile, SavedSession, default_profile
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

__all__ = [
    "TEST_KDF_ENV",
    "Contents",
    "FileSystem",
    "Listing",
    "NodeApi",
    "Profile",
    "SavedSession",
    "Session",
    "change_password",
    "default_profile",
    "get_file",
    "get_tree",
    "login",
    "login_keys",
    "logout",
    "put_tree",
    "reopen",
    "resume",
    "signup",
    "social",
    "tree_size",
]
