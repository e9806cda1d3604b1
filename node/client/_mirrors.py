"""Mirroring from the user's side: the token a mirror node needs, and the list of mirrors in the
user's PKI claim (DESIGN §11)."""

from __future__ import annotations

from node.client import _typed
from node.client._session import Session
from protocols import methods
from protocols.errors import Corrupted, MalformedInput
from protocols.mirrors import MirrorToken
from protocols.peerid import check_peer_id
from protocols.pki import MAX_MIRRORS, Claim, next_expiry


def mirror_token(session: Session) -> str:
    """The token `pyrgos node mirror add` takes: the username and the mirror BAT. It reads
    every block of the user (ciphertext only) and nothing else; it cannot write."""
    return MirrorToken(session.username, session.data.mirror_bat).to_text()


async def _current_claim(session: Session) -> Claim:
    """The user's claim as the PKI holds it, checked against their login data."""
    lookup = methods.PkiLookup(session.username)
    current = (await _typed.request(session.api, lookup, methods.PkiLookupReply)).claim
    if current.identity != session.owner:
        raise Corrupted("the PKI names another identity for this user than their login data")
    return current


async def publish_mirrors(session: Session, nodes: list[str]) -> Claim:
    """Replace the mirrors the user's PKI claim lists by `nodes` (node ids; none clears the
    list): a claim update signed by the identity key, through the PKI submission path."""
    for node in nodes:
        check_peer_id(node)
    if len(set(nodes)) != len(nodes):
        raise MalformedInput("a node is listed twice")
    if len(nodes) > MAX_MIRRORS:
        raise MalformedInput(f"a claim lists at most {MAX_MIRRORS} mirrors")
    current = await _current_claim(session)
    if current.home in nodes:
        raise MalformedInput("the home node is not a mirror of itself")
    claim = Claim.create(
        session.identity,
        session.username,
        current.home,
        next_expiry(current, int(session.api.clock())),
        mirrors=nodes,
    )
    await _typed.request(session.api, methods.PkiSubmit(claim), methods.PkiSubmitReply)
    return claim


async def migrate(session: Session, node: str) -> Claim:
    """Make `node`, a node that mirrors the user and is caught up, their home (protocol.md
    §14): a claim naming it home, signed by the identity key, which the API node passes to it.
    The old home becomes the first mirror the claim lists (it keeps a copy); `node` leaves
    the list."""
    check_peer_id(node)
    current = await _current_claim(session)
    mirrors = [current.home, *(m for m in current.mirrors if m != node)][:MAX_MIRRORS]
    if current.home == node:  # the node finishes a move the PKI took, or says it is home
        mirrors = list(current.mirrors)
    claim = Claim.create(
        session.identity,
        session.username,
        node,
        next_expiry(current, int(session.api.clock())),
        mirrors=mirrors,
    )
    await _typed.request(session.api, methods.AccountMigrate(claim), methods.Done)
    session.home_node = node.encode()  # this session's reads now name the new home
    return claim
