"""The tunnel's messages (`/pyrgos/rpc/1.0.0`, DESIGN §8): calls and replies matched by id.

Each message is one frame (protocols/frames.py) of at most MAX_FRAME bytes of CBOR:

    request  {"id": uint, "method": text, "args": map}
    reply    {"id": uint, "result": any}
           | {"id": uint, "error": {"code": text, "message": text}}

- `id`: chosen by the caller, 0 ≤ id < 2⁶³, unique among its calls in flight on the stream; a
  reply carries the id of its request. Replies may come in any order (calls are pipelined).
- `method`: 1 to 64 characters, a name from the node's method table (protocols/methods.py).
- `args`: a CBOR map, the same arguments the HTTP API takes for that method.
- `result`: any CBOR value.
- `error.code`: 1 to 64 characters, a PyrgosError code (protocols/errors.py) or "internal" for a
  failure the server does not explain; `error.message`: at most 1024 characters, for a user.
Maps have exactly these keys; anything else is MalformedInput.

Call limits, the same over HTTP and the tunnel: a call's arguments are at most
`args_limit(method)` bytes of CBOR (the method's `args_bytes` in protocols/methods.py:
MAX_CALL_BYTES for the methods that carry blocks, SMALL_CALL for every other) and at most
MAX_CALL_ITEMS items. Items are counted before anything is decoded; the size before the method
runs (over HTTP, before the body is read).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from protocols.cbor import CBORValue, encoded_length
from protocols.errors import MalformedInput, PyrgosError, TooLarge, error_from_code
from protocols.methods import MAX_CALL_BYTES as MAX_CALL_BYTES
from protocols.methods import METHODS
from protocols.methods import SMALL_CALL as SMALL_CALL

# The methods whose arguments carry blocks: the only ones that need megabytes.
CALL_BYTES: Final = {m.name: m.args_bytes for m in METHODS.values() if m.args_bytes != SMALL_CALL}
# Items in one call's arguments: a put of 64 blocks holds about 300. Refusing past this
# before decoding keeps a megabyte body of tiny items from costing seconds of CPU.
MAX_CALL_ITEMS: Final = 4096
MAX_FRAME: Final = MAX_CALL_BYTES + 64 * 1024  # one call's arguments and its envelope
MAX_REQUEST_ITEMS: Final = MAX_CALL_ITEMS + 8  # and the envelope's: a map, 3 keys, id, method
MAX_ID: Final = 2**63 - 1
MAX_METHOD_CHARS: Final = 64
MAX_CODE_CHARS: Final = 64
MAX_MESSAGE_CHARS: Final = 1024
INTERNAL: Final = "internal"  # the code of a failure whose details stay on the server
INTERNAL_MESSAGE: Final = "internal error"


@dataclass(frozen=True)
class Request:
    id: int
    method: str
    args: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    id: int
    result: Any = None
    error: PyrgosError | None = None

    def unwrap(self) -> Any:
        """The result, or the typed error the server answered with."""
        if self.error is not None:
            raise self.error
        return self.result


def args_limit(method: str) -> int:
    """The most bytes of CBOR the arguments of a call to `method` may take."""
    spec = METHODS.get(method)
    return SMALL_CALL if spec is None else spec.args_bytes


def check_args_size(method: str, args: dict[str, Any]) -> None:
    """TooLarge when a call's arguments (decoded: items are already bounded) are over its
    method's byte limit."""
    limit = args_limit(method)
    if encoded_length(args) > limit:
        raise TooLarge(f"the arguments of {method[:MAX_METHOD_CHARS]} are at most {limit} bytes")


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID


def _check_id(value: object) -> int:
    if not _is_id(value):
        raise MalformedInput(f"an rpc id is an integer in [0, {MAX_ID}]")
    assert isinstance(value, int)
    return value


def _check_text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        raise MalformedInput(f"{what} must be text of 1 to {limit} characters")
    return value


def request(call_id: int, method: str, args: dict[str, Any]) -> CBORValue:
    """A request message (checked, so a caller cannot put garbage on the wire)."""
    return _unparse(parse_request({"id": call_id, "method": method, "args": args}))


def _unparse(parsed: Request) -> CBORValue:
    return {"id": parsed.id, "method": parsed.method, "args": parsed.args}


def parse_request(value: CBORValue) -> Request:
    """A received request, or MalformedInput (TooLarge for arguments over the method's limit)."""
    if not isinstance(value, dict) or set(value) != {"id", "method", "args"}:
        raise MalformedInput("an rpc request is {id, method, args}")
    call_id = _check_id(value["id"])
    method = _check_text(value["method"], "an rpc method", MAX_METHOD_CHARS)
    if not isinstance(value["args"], dict):
        raise MalformedInput("rpc arguments must be a CBOR map")
    check_args_size(method, value["args"])
    return Request(call_id, method, value["args"])


def request_id(value: CBORValue) -> int | None:
    """The id of a request that failed `parse_request`, when it has a usable one to answer."""
    if isinstance(value, dict) and _is_id(value.get("id")):
        call_id: int = value["id"]
        return call_id
    return None


def result_reply(call_id: int, result: CBORValue) -> CBORValue:
    return {"id": _check_id(call_id), "result": result}


def error_reply(call_id: int, error: BaseException) -> CBORValue:
    """The reply for a failed call: a PyrgosError's code and message; anything else is
    'internal' with no details (they may hold what a peer must not see)."""
    if isinstance(error, PyrgosError):
        code, message = error.code[:MAX_CODE_CHARS], error.message[:MAX_MESSAGE_CHARS]
    else:
        code, message = INTERNAL, INTERNAL_MESSAGE
    return {"id": _check_id(call_id), "error": {"code": code, "message": message or code}}


def parse_reply(value: CBORValue) -> Reply:
    """A received reply, or MalformedInput. An error reply becomes its typed PyrgosError."""
    if not isinstance(value, dict):
        raise MalformedInput("an rpc reply is a CBOR map")
    if set(value) == {"id", "result"}:
        return Reply(_check_id(value["id"]), result=value["result"])
    if set(value) != {"id", "error"}:
        raise MalformedInput("an rpc reply is {id, result} or {id, error}")
    call_id = _check_id(value["id"])
    error = value["error"]
    if not isinstance(error, dict) or set(error) != {"code", "message"}:
        raise MalformedInput("an rpc error is {code, message}")
    code = _check_text(error["code"], "an rpc error code", MAX_CODE_CHARS)
    message = _check_text(error["message"], "an rpc error message", MAX_MESSAGE_CHARS)
    typed = error_from_code(code, message)
    typed.code = code  # an unknown code ("internal", a newer peer's) survives a relay
    return Reply(call_id, error=typed)
