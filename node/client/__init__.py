"""A user's session with a node: accounts and the encrypted filesystem (all crypto is here)."""

from node.client._api import NodeApi
from node.client._fs import FileSystem, Listing
from node.client._session import Session, change_password, login, login_keys, resume, signup

__all__ = [
    "FileSystem",
    "Listing",
    "NodeApi",
    "Session",
    "change_password",
    "login",
    "login_keys",
    "resume",
    "signup",
]
