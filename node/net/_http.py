"""The node's HTTP API: the method table over HTTP with CBOR bodies, plus block GET by CID.

`POST /api/v1/call/<method>` takes a CBOR map of arguments and answers the CBOR result (200) or
`{"error": code, "message": text}` with a 4xx/5xx status. `GET /api/v1/block/<cid>?auth=...`
answers the block's bytes. Bodies over the limit are refused before they are read in full.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Final

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from node.server import NodeService
from protocols import bats, cbor
from protocols.cid import CID
from protocols.errors import MalformedInput, NotFound, PyrgosError, TooLarge

log = logging.getLogger(__name__)

API_PREFIX: Final = "/api/v1"
MAX_BODY_BYTES: Final = 9 * 1024 * 1024  # one put of 8 blocks of 1 MiB and its framing
CBOR_TYPE: Final = "application/cbor"


def _error(exc: PyrgosError) -> Response:
    body = cbor.encode({"error": exc.code, "message": exc.message})
    return Response(body, status_code=exc.http_status, media_type=CBOR_TYPE)


def _internal_error() -> Response:
    """A 500 that says nothing about the failure: the details go to the log only."""
    body = cbor.encode({"error": "internal", "message": "internal error"})
    return Response(body, status_code=500, media_type=CBOR_TYPE)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong verbs answer in the API's CBOR error form too."""
    status = exc.status_code if isinstance(exc, HTTPException) else 400
    kind = NotFound if status == 404 else MalformedInput
    body = cbor.encode({"error": kind.code, "message": f"no such API endpoint (HTTP {status})"})
    return Response(body, status_code=status, media_type=CBOR_TYPE)


async def _read_body(request: Request) -> bytearray:
    """The request body, gathered in one growing buffer (never the parts and their join at
    once: a put's body is megabytes, and several are in flight)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise TooLarge(f"request bodies are at most {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async with contextlib.aclosing(request.stream()) as stream:
        async for part in stream:
            if len(body) + len(part) > MAX_BODY_BYTES:
                raise TooLarge(f"request bodies are at most {MAX_BODY_BYTES} bytes")
            body += part
    return body


def build_app(service: NodeService) -> Starlette:
    """The ASGI app serving `service`'s method table."""

    async def call(request: Request) -> Response:
        method = request.path_params["method"]
        try:
            body = await _read_body(request)
            args = cbor.decode(body, limit=MAX_BODY_BYTES) if body else {}
            del body  # the blocks now live in `args`: the body need not wait for the answer
            client = request.client  # the source that per-source limits (signups) count
            result: Any = await service.call(method, args, source=client.host if client else "")
            return Response(cbor.encode(result), media_type=CBOR_TYPE)
        except PyrgosError as exc:
            return _error(exc)
        except Exception:
            log.exception("internal error in %s", method[:64])
            return _internal_error()

    async def get_block(request: Request) -> Response:
        try:
            cid = CID.from_text(request.path_params["cid"])
            auth_text = request.query_params.get("auth")
            auth = bats.ReadAuth.from_text(auth_text) if auth_text else None
            owner_text = request.query_params.get("owner")
            owner = CID.from_text(owner_text) if owner_text else None
            if owner is not None and not owner.is_identity:
                raise MalformedInput("owner must be a public-key hash")
            data = await service.get_block(cid, auth, b"", owner)
            return Response(data, media_type="application/octet-stream")
        except PyrgosError as exc:
            return _error(exc)
        except Exception:
            log.exception("internal error in a block read")
            return _internal_error()

    return Starlette(
        routes=[
            Route(API_PREFIX + "/call/{method}", call, methods=["POST"]),
            Route(API_PREFIX + "/block/{cid}", get_block, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error},
    )


async def serve_api(
    service: NodeService,
    host: str,
    port: int,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,  # trio.TaskStatus[str],
) -> None:
    """Serve the API until cancelled; reports the URL it listens on (port 0 picks one)."""
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 75
    config.h11_max_incomplete_size = 64 * 1024
    config.graceful_timeout = 2

    async def started_serve(*, task_status: Any) -> None:
        await serve(build_app(service), config, task_status=task_status)  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(started_serve)
        task_status.started(binds[0])
