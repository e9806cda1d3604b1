"""Naming and password rules: usernames (DESIGN §7), file names and paths (DESIGN §6).

Every rule is checked where a name is written and again where it is read back, so a hostile
writer cannot plant a traversal.
"""

from __future__ import annotations

import re
from typing import Final

from protocols.errors import InvalidName, WeakPassword

USERNAME_PATTERN: Final = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){0,31}$")
# Names that would impersonate the system or collide with object keys in clients.
BANNED_USERNAMES: Final = frozenset(
    {
        "admin", "administrator", "root", "pyrgos", "pki", "www", "mail", "api", "ipfs",
        "constructor", "prototype", "tostring", "valueof", "null", "undefined", "system",
        "support", "help", "security", "public", "shared", "secret", "friends", "followers",
        "username", "groups", "node", "nodes", "login", "signup",
    }
)  # fmt: skip
MIN_PASSWORD_CHARS: Final = 10
MAX_PASSWORD_BYTES: Final = 1024  # bounds the KDF input
MAX_NAME_BYTES: Final = 255
MAX_PATH_BYTES: Final = 4096


def check_username(username: str) -> str:
    """Return `username` if it may be claimed, else raise InvalidName."""
    if not isinstance(username, str) or not USERNAME_PATTERN.fullmatch(username):
        raise InvalidName("usernames are 1-32 characters of a-z, 0-9 and single inner hyphens")
    if username in BANNED_USERNAMES:
        raise InvalidName(f"the username {username!r} is reserved")
    return username


def check_password(username: str, password: str) -> None:
    """The same strength rules at signup and at every password change."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise WeakPassword(f"passwords need at least {MIN_PASSWORD_CHARS} characters")
    try:
        encoded = password.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. undecodable terminal bytes
        raise WeakPassword("passwords must be valid UTF-8 text") from None
    if len(encoded) > MAX_PASSWORD_BYTES:
        raise WeakPassword(f"passwords are at most {MAX_PASSWORD_BYTES} bytes")
    if password.lower() == username.lower():
        raise WeakPassword("the password must not be the username")
    if username.lower() in password.lower():
        raise WeakPassword("the password must not contain the username")


def check_file_name(name: str) -> str:
    """Return `name` if it is a valid file or directory name, else raise InvalidName."""
    if not isinstance(name, str):
        raise InvalidName("a name must be text")
    encoded = name.encode("utf-8", errors="surrogatepass")
    if not 1 <= len(encoded) <= MAX_NAME_BYTES:
        raise InvalidName(f"names are 1-{MAX_NAME_BYTES} bytes of UTF-8")
    if "/" in name or "\x00" in name:
        raise InvalidName("names must not contain '/' or NUL")
    if name in (".", ".."):
        raise InvalidName("'.' and '..' are not valid names")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidName("names must be valid UTF-8") from exc
    return name


def split_path(path: str) -> list[str]:
    """Split an absolute or relative path into checked names.

    Empty parts (doubled or trailing slashes) are skipped; a path of just "." is the starting
    directory; any other "." or ".." part is refused rather than interpreted.
    """
    if len(path.encode("utf-8", errors="surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidName(f"paths are at most {MAX_PATH_BYTES} bytes")
    if path.strip("/") == ".":
        return []
    return [check_file_name(part) for part in path.split("/") if part]
