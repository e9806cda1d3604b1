"""Transports: the HTTP API (and, later, the libp2p host) over one method table."""

from node.net._http import API_PREFIX, MAX_BODY_BYTES, build_app, serve_api

__all__ = ["API_PREFIX", "MAX_BODY_BYTES", "build_app", "serve_api"]
