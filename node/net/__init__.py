"""Transports: the HTTP API (and, later, the libp2p host) over one method table."""

from node.net._host import Host, open_host
from node.net._http import (
    API_PREFIX,
    MAX_BODY_BYTES,
    ApiLimits,
    answer_block,
    answer_call,
    build_app,
    serve_api,
)
from node.net._network import BLOCKS_PROTOCOL, RPC_PROTOCOL, Libp2pNetwork, Served, serve_node
from node.net._stream import Dialer, Handler, Stream

__all__ = ["API_PREFIX", "MAX_BODY_BYTES", "ApiLimits", "answer_block", "answer_call"]
__all__ += ["build_app", "serve_api"]
__all__ += ["Dialer", "Handler", "Host", "Stream", "open_host"]
__all__ += ["BLOCKS_PROTOCOL", "RPC_PROTOCOL", "Libp2pNetwork", "Served", "serve_node"]
