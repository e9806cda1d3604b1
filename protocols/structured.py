"""The structured (dag-cbor) blocks a node stores: WriterData, CHAMP nodes, cryptree nodes, and
the link-target and public-entry blocks of secret links and publishing.

A node checks every dag-cbor block at put against these shapes, so that whatever it must
later decode (to collect garbage, to count usage) is small, known and cheap to decode.
"""

from __future__ import annotations

from typing import Final

from protocols import cbor, champ, cryptree
from protocols.cid import CID
from protocols.errors import MalformedInput, TooLarge
from protocols.links import LinkTarget
from protocols.publishing import PublicEntry
from protocols.writerdata import MAX_WRITER_DATA, WriterData

# The largest of the kinds: a full CHAMP node is under 12 KiB, a cryptree node and a
# WriterData at most 16 KiB each. A hostile block can thus hold at most ~16,000 CBOR items.
MAX_STRUCTURED_BYTES: Final = max(champ.MAX_NODE_SIZE, cryptree.MAX_NODE_BYTES, MAX_WRITER_DATA)


def check_structured(data: bytes) -> None:
    """Raise TooLarge or MalformedInput unless `data` is one of the known structured blocks."""
    if len(data) > MAX_STRUCTURED_BYTES:
        raise TooLarge(f"a dag-cbor block is at most {MAX_STRUCTURED_BYTES} bytes")
    value = cbor.decode(data, limit=MAX_STRUCTURED_BYTES)
    if isinstance(value, list):
        champ.check_node(data)
    elif isinstance(value, dict) and "controller" in value:
        WriterData.decode(data)
    elif isinstance(value, dict) and "link" in value:  # before "bats": a link target has both
        LinkTarget.decode(data)
    elif isinstance(value, dict) and "public" in value:
        PublicEntry.decode(data)
    elif isinstance(value, dict) and "bats" in value:
        cryptree.Node.decode(data)
    else:
        raise MalformedInput(
            "a dag-cbor block must be a WriterData, a CHAMP node, a cryptree node, "
            "a link target or a public entry"
        )


def structured_links(data: bytes) -> list[CID]:
    """The links of a stored structured block; MalformedInput or TooLarge for any other block
    (one stored before blocks were checked at put), whose links a collection then ignores."""
    if len(data) > MAX_STRUCTURED_BYTES:
        raise TooLarge(f"a dag-cbor block is at most {MAX_STRUCTURED_BYTES} bytes")
    return cbor.iter_links(cbor.decode(data, limit=MAX_STRUCTURED_BYTES))
