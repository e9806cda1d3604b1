"""Transports: the HTTP API (and, later, the libp2p host) over one method table."""

from node.net._host import Handler, Host, open_host
from node.net._http import API_PREFIX, MAX_BODY_BYTES, ApiLimits, build_app, serve_api
from node.net._network import BLOCKS_PROTOCOL, RPC_PROTOCOL, Libp2pNetwork, serve_node
from node.net._stream import Stream

__all__ = ["API_PREFIX", "MAX_BODY_BYTES", "ApiLimits", "build_app", "serve_api"]
__all__ += ["Handler", "Host", "Stream", "open_host"]
__all__ += ["BLOCKS_PROTOCOL", "RPC_PROTOCOL", "Libp2pNetwork", "serve_node"]
