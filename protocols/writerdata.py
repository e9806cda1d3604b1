"""WriterData (DESIGN §4): the root block of a writer, the target of its mutable pointer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from protocols import cbor
from protocols.cid import CID, CODEC_DAG_CBOR
from protocols.crypto import BoxingPublicKey, KdfParams
from protocols.errors import MalformedInput, TooLarge

VERSION: Final = 1
MAX_WRITER_DATA: Final = 16 * 1024
# An owner proof is a signed statement of about 150 bytes. 32 of them (more writers than a
# user makes today) still fit a WriterData with its login and boxing keys in MAX_WRITER_DATA,
# and keep a hostile `owned` small in items.
MAX_OWNED: Final = 32
MAX_OWNER_PROOF: Final = 256


@dataclass(frozen=True)
class WriterData:
    """`controller` and `tree` always; `login` and `boxing` on a user's identity writer."""

    controller: CID
    tree: CID
    login: KdfParams | None = None
    boxing: BoxingPublicKey | None = None
    owned: list[bytes] = field(default_factory=list)
    links: CID | None = None
    public: CID | None = None  # the published items' CHAMP (protocols/publishing.py)

    def to_cbor(self) -> dict[str, object]:
        value: dict[str, object] = {
            "v": VERSION,
            "controller": self.controller,
            "tree": self.tree,
            "owned": list(self.owned),
        }
        if self.login is not None:
            value["login"] = self.login.to_cbor()
        if self.boxing is not None:
            value["boxing"] = self.boxing.to_cbor()
        if self.links is not None:
            value["links"] = self.links
        if self.public is not None:
            value["public"] = self.public
        return value

    def encode(self) -> bytes:
        return cbor.encode(self.to_cbor())

    @classmethod
    def decode(cls, data: bytes) -> WriterData:
        value = cbor.decode(data, limit=MAX_WRITER_DATA)
        if not isinstance(value, dict) or type(value.get("v")) is not int or value["v"] != VERSION:
            raise MalformedInput("not a WriterData block of a known version")
        controller, tree = value.get("controller"), value.get("tree")
        if not isinstance(controller, CID) or not controller.is_identity:
            raise MalformedInput("WriterData controller must be a public-key hash")
        if not isinstance(tree, CID) or tree.codec != CODEC_DAG_CBOR:
            raise MalformedInput("WriterData tree must link a CHAMP root")
        owned = value.get("owned", [])
        if not isinstance(owned, list) or len(owned) > MAX_OWNED:
            raise MalformedInput(f"WriterData owned must be a list of at most {MAX_OWNED} proofs")
        if not all(type(p) is bytes and len(p) <= MAX_OWNER_PROOF for p in owned):
            raise MalformedInput(f"each owner proof must be at most {MAX_OWNER_PROOF} bytes")
        links = value.get("links")
        if links is not None and (not isinstance(links, CID) or links.codec != CODEC_DAG_CBOR):
            raise MalformedInput("WriterData links must link a CHAMP root")
        public = value.get("public")
        if public is not None and (not isinstance(public, CID) or public.codec != CODEC_DAG_CBOR):
            raise MalformedInput("WriterData public must link a CHAMP root")
        known = {"v", "controller", "tree", "owned", "login", "boxing", "links", "public"}
        unknown = set(value) - known
        if unknown:
            raise MalformedInput(f"unknown WriterData fields: {sorted(unknown)}")
        return cls(
            controller=controller,
            tree=tree,
            login=KdfParams.from_cbor(value["login"]) if "login" in value else None,
            boxing=BoxingPublicKey.from_cbor(value["boxing"]) if "boxing" in value else None,
            owned=owned,
            links=links,
            public=public,
        )


def controller_of(data: bytes) -> CID | None:
    """The controller of a WriterData block, or None when `data` is not one."""
    try:
        return WriterData.decode(data).controller
    except (MalformedInput, TooLarge):
        return None
