"""Typed calls: a request of protocols/methods.py in, its checked reply out, over a NodeApi.

info = await typed.request(api, methods.NodeInfo(), methods.NodeInfoReply)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from protocols.errors import Corrupted, MalformedInput, TooLarge
from protocols.methods import Message, method_of

if TYPE_CHECKING:  # NodeApi itself makes typed calls
    from node.client._api import NodeApi

R = TypeVar("R", bound=Message)


async def request(api: NodeApi, call: Message, reply: type[R]) -> R:
    """Send `call` to its method and decode the answer as `reply` (the method's reply type).

    The node's answer is held to the reply type: a malformed one is Corrupted, as any data
    a node sends that does not check out. The session token, when the method needs one and
    the request carries none, is added by `NodeApi.call`.
    """
    spec = method_of(call)
    if spec.reply is not reply:
        raise TypeError(f"{spec.name} answers {spec.reply.__name__}, not {reply.__name__}")
    args = call.to_cbor()
    assert isinstance(args, dict)  # every request encodes to its arguments map
    result = await api.call(spec.name, args)
    try:
        return reply.from_cbor(result)
    except (MalformedInput, TooLarge) as exc:
        raise Corrupted(f"the node's answer to {spec.name} is malformed: {exc.message}") from exc
