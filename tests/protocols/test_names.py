"""Tests of protocols.names: usernames, passwords, file names and paths."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import names
from protocols.errors import InvalidName, WeakPassword

# The rule of DESIGN §7, restated independently of the module's pattern.
ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"


def is_valid_username(name: str) -> bool:
    return (
        1 <= len(name) <= 32
        and all(c in ALNUM + "-" for c in name)
        and name[0] != "-"
        and name[-1] != "-"
        and "--" not in name
    )


# --- usernames ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "username",
    ["a", "z", "0", "alice", "bob42", "a-b", "a-b-c", "x1-2y", "9lives", "a" * 32, "a-" * 15 + "ab",
     "0-0"],
)  # fmt: skip
def test_valid_usernames(username: str) -> None:
    assert names.check_username(username) == username


@pytest.mark.parametrize(
    "username",
    [
        "",
        "-",
        "-alice",
        "alice-",
        "al--ice",
        "a---b",
        "Alice",
        "ALICE",
        "al ice",
        " alice",
        "alice ",
        "alice\n",
        "\nalice",
        "al_ice",
        "al.ice",
        "alice!",
        "a" * 33,
        "a-" * 16 + "a",  # 33 characters
        "ålice",
        "al\u0131ce",  # dotless i
        "\u0430lice",  # Cyrillic a
        "\uff41lice",  # full-width a
        "\uff11\uff12\uff13",  # full-width digits
        "alice\x00",
        "../alice",
        "alice/bob",
    ],
)
def test_invalid_usernames(username: str) -> None:
    with pytest.raises(InvalidName):
        names.check_username(username)


@pytest.mark.parametrize("username", [None, 1, b"alice", ["alice"]])
def test_username_must_be_text(username: Any) -> None:
    with pytest.raises(InvalidName):
        names.check_username(username)


@pytest.mark.parametrize("username", sorted(names.BANNED_USERNAMES))
def test_banned_usernames(username: str) -> None:
    assert names.USERNAME_PATTERN.fullmatch(username)  # banned, not merely malformed
    with pytest.raises(InvalidName, match="reserved"):
        names.check_username(username)


@pytest.mark.parametrize("username", ["admin", "root", "pyrgos", "pki", "www", "constructor"])
def test_design_names_are_banned(username: str) -> None:
    assert username in names.BANNED_USERNAMES


def test_banned_names_are_exact_matches() -> None:
    for username in ("admin1", "roots", "my-root", "pki-mirror", "wwww"):
        assert names.check_username(username) == username


@given(st.text(alphabet=ALNUM + "-_A .", max_size=40))
def test_username_rule_matches_the_design(name: str) -> None:
    expected = is_valid_username(name) and name not in names.BANNED_USERNAMES
    try:
        names.check_username(name)
    except InvalidName:
        assert not expected
    else:
        assert expected


@given(st.text(max_size=40))
def test_username_never_accepts_non_ascii(name: str) -> None:
    try:
        names.check_username(name)
    except InvalidName:
        return
    assert is_valid_username(name)


def test_username_pattern_is_the_designs() -> None:
    assert names.USERNAME_PATTERN.pattern == r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){0,31}$"
    # `$` alone would match before a final newline; check_username relies on fullmatch.
    assert re.match(names.USERNAME_PATTERN.pattern, "alice\n")
    assert not names.USERNAME_PATTERN.fullmatch("alice\n")


# --- passwords ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("alice", "correct horse battery"),
        ("alice", "0123456789"),  # exactly 10 characters
        ("alice", "ééééééééééé"),  # characters, not bytes
        ("alice", "🔑" * 10),
        ("alice", "ALIC3-wonderland"),
        ("alice", "x" * names.MAX_PASSWORD_BYTES),
        ("a", "bcdefghijkl"),
        ("bob", "b-o-b-passphrase"),
    ],
)
def test_good_passwords(username: str, password: str) -> None:
    names.check_password(username, password)


@pytest.mark.parametrize(
    ("username", "password", "reason"),
    [
        ("alice", "", "at least"),
        ("alice", "123456789", "at least"),  # 9 characters
        ("alice", "é" * 9, "at least"),  # 18 bytes, but 9 characters
        ("alice", "x" * (names.MAX_PASSWORD_BYTES + 1), "at most"),
        ("alice", "é" * (names.MAX_PASSWORD_BYTES // 2 + 1), "at most"),  # 1026 bytes
        ("longusername", "longusername", "not be the username"),
        ("longusername", "LongUserName", "not be the username"),
        ("longusername", "LONGUSERNAME", "not be the username"),
        ("alice", "alice-in-wonderland", "contain"),
        ("alice", "my password is ALICE", "contain"),
        ("alice", "xxxxxAlIcExxxxx", "contain"),
        ("alice", "1234567890alice", "contain"),
        ("bob", "passwordbob", "contain"),
    ],
)
def test_weak_passwords(username: str, password: str, reason: str) -> None:
    with pytest.raises(WeakPassword, match=reason):
        names.check_password(username, password)


@pytest.mark.parametrize("password", ["\ud800" * 12, "good password \udcff", "\udc80abcdefghijkl"])
def test_password_with_lone_surrogates_is_refused_cleanly(password: str) -> None:
    # A terminal can hand Python undecodable bytes as lone surrogates (surrogateescape): the
    # rule must refuse them with its own error, not crash with UnicodeEncodeError.
    with pytest.raises(WeakPassword):
        names.check_password("alice", password)


@given(username=st.text(alphabet=ALNUM, min_size=1, max_size=8), prefix=st.text(max_size=6),
       suffix=st.text(max_size=6))  # fmt: skip
def test_password_containing_the_username_in_any_case(
    username: str, prefix: str, suffix: str
) -> None:
    password = prefix + username.upper() + suffix
    with pytest.raises(WeakPassword):
        names.check_password(username, password)


# --- file names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "file.txt",
        ".hidden",
        "...",
        ". ",
        " ",
        "a b",
        "..a",
        "a..",
        "\\",
        "C:",
        "名前.txt",
        "🙂",
        "\x01",
        "\ufeff",
        "x" * 255,
        "é" * 127 + "a",  # 255 bytes
        "€" * 85,  # 255 bytes of three-byte characters
        "🙂" * 63 + "abc",  # 255 bytes of four-byte characters and three ASCII
    ],
)
def test_valid_file_names(name: str) -> None:
    assert len(name.encode()) <= 255
    assert names.check_file_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "/",
        "a/b",
        "../x",
        "/etc",
        "x/",
        "\x00",
        "a\x00b",
        "x" * 256,
        "é" * 128,  # 128 characters, 256 bytes
        "€" * 86,  # 258 bytes
        "🙂" * 64,  # 64 characters, 256 bytes
        "🙂" * 63 + "abcd",  # 256 bytes
        "x" * 254 + "é",  # 256 bytes
        "\ud800",
        "a\udc80b",
        "\udfff" + "x" * 10,
        "\ud83d\ude42",  # a surrogate pair spelled as two code points is still two lone ones
    ],
)
def test_invalid_file_names(name: str) -> None:
    with pytest.raises(InvalidName):
        names.check_file_name(name)


@pytest.mark.parametrize("name", [None, 1, b"file", ["file"]])
def test_file_name_must_be_text(name: Any) -> None:
    with pytest.raises(InvalidName):
        names.check_file_name(name)


@given(st.text(min_size=1, max_size=300))
def test_file_name_rule(name: str) -> None:
    encoded = name.encode("utf-8", errors="surrogatepass")
    expected = (
        1 <= len(encoded) <= 255
        and "/" not in name
        and "\x00" not in name
        and name not in (".", "..")
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in name)
    )
    try:
        names.check_file_name(name)
    except InvalidName:
        assert not expected
    else:
        assert expected


# --- paths -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("", []),
        ("/", []),
        ("//", []),
        (".", []),
        ("./", []),
        ("a", ["a"]),
        ("/alice/docs/file.txt", ["alice", "docs", "file.txt"]),
        ("alice//docs/", ["alice", "docs"]),
        ("a/.hidden/...", ["a", ".hidden", "..."]),
        ("/" + "/".join(["x" * 255] * 16), ["x" * 255] * 16),  # 4096 bytes
    ],
)
def test_split_path(path: str, parts: list[str]) -> None:
    assert names.split_path(path) == parts


@pytest.mark.parametrize(
    "path",
    [
        "..",
        "/alice/../bob",
        "a/..",
        "../a",
        "./a/./b/.",
        "notes/.",
        "a/b\x00c",
        "a/" + "x" * 256,
        "a/\ud800",
        "/" + "/".join(["x" * 255] * 16) + "x",  # 4097 bytes
        "a" * 5000,
        "/" * 4097,
    ],
)
def test_split_path_rejects(path: str) -> None:
    with pytest.raises(InvalidName):
        names.split_path(path)


@given(st.lists(st.text(alphabet="ab.é/", min_size=1, max_size=5), max_size=8))
def test_split_path_checks_every_part(parts: list[str]) -> None:
    path = "/".join(parts)
    try:
        found = names.split_path(path)
    except InvalidName:
        assert {".", ".."} & set(path.split("/"))
        assert path.strip("/") != "."
        return
    assert found == [part for part in path.split("/") if part not in ("", ".")]
    for part in found:
        assert names.check_file_name(part) == part
