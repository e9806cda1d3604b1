"""The block exchange (`/pyrgos/blocks/1.0.0`, DESIGN §8) as sans-I/O state machines.

`Requester` fetches blocks from one or more sources with up to `window` wants in flight at each
(no stop-and-wait), falls back to another source on DontHave, Denied or a failed source, and
accepts a block only if it hashes to its CID. `Responder` is the serving side's bounded queue.

Each message is one frame (protocols/frames.py); every map has exactly the keys shown.

Requester → server, at most MAX_REQUEST_FRAME (64 KiB) of CBOR:

    {"cancel": [cid, …], "want": [[cid, auth | null], …]}

- Either key may be left out, not both; a list present is non-empty; together at most
  MAX_ENTRIES (256) entries. `cid` is a CID (tag 42). `auth` is a read auth {id, exp, mac}
  (protocols/bats.py) bound to the requester's and this server's node ids, or null.
- The server applies the cancels first, then the wants, in list order. A want for a CID already
  queued replaces its auth and keeps its place; a cancel of a CID that is not queued (unknown,
  being answered, answered) does nothing.
- At most MAX_QUEUED (1024) wants wait at a server per stream; more is TooLarge and ends the
  stream. A requester keeps at most `window` ≤ MAX_WINDOW (= MAX_QUEUED) wants outstanding, and
  the server reads messages in order, so an honest requester never exceeds the queue.
- A requester whose window is full sends the wants that answers free up in batches of
  window / 8 (at least one): a run of large blocks then costs a request per eight blocks, not
  one each, and the window stays at least seven eighths full. When nothing more can be added
  (no want is left for that source) what has gathered goes out at once, as cancels always do.

Server → requester, one message per answered CID, at most MAX_ANSWER_FRAME (1 MiB + 9 KiB):

    {"cid": cid, "kind": "block", "data": bytes}       data ≤ MAX_BLOCK_BYTES, hashes to cid
    {"cid": cid, "kind": "dont-have"}
    {"cid": cid, "kind": "denied", "message": text}    message 1 to 256 characters

- Answers come in any order. The server answers every want it takes off its queue and none it
  dropped on a cancel. A want cancelled while it is being answered may still be answered, so a
  requester ignores answers for CIDs it is not waiting for (counted in `Requester.strays`).
- A block that does not hash to its CID is Corrupted: the requester drops that source.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final, Literal

from protocols.bats import ReadAuth
from protocols.cbor import CBORValue
from protocols.cid import CID
from protocols.cryptree import MAX_BLOCK_BYTES
from protocols.errors import (
    Corrupted,
    Denied,
    MalformedInput,
    NotFound,
    PyrgosError,
    TooLarge,
    Unavailable,
)

MAX_ENTRIES: Final = 256  # per request message; keeps it far under MAX_REQUEST_FRAME
MAX_REQUEST_FRAME: Final = 64 * 1024  # 256 wants of ≤ 137 bytes each fit with room to spare
MAX_ANSWER_FRAME: Final = MAX_BLOCK_BYTES + 1024  # one block and its envelope
MAX_QUEUED: Final = 1024  # wants a server holds per stream: bounds its memory (~150 KiB)
MAX_WINDOW: Final = MAX_QUEUED
DEFAULT_WINDOW: Final = 64  # 64 blocks of 4 KiB cover a 10 ms round trip at 200 Mbit/s
WANT_BATCHES: Final = 8  # per window: wants go out window // 8 at a time while it is full
MAX_DENIED_CHARS: Final = 256

Want = tuple[CID, ReadAuth | None]
Kind = Literal["block", "dont-have", "denied"]
AuthFor = Callable[[int, CID], ReadAuth | None]  # (source index, cid) → the auth to show there


# --- messages ------------------------------------------------------------------------------


def request_message(wants: Iterable[Want] = (), cancels: Iterable[CID] = ()) -> CBORValue:
    """A want/cancel message (at most MAX_ENTRIES entries; see the module docstring)."""
    message: dict[str, CBORValue] = {}
    cancel_list = list(cancels)
    want_list = [[cid, None if auth is None else auth.to_cbor()] for cid, auth in wants]
    if cancel_list:
        message["cancel"] = cancel_list
    if want_list:
        message["want"] = want_list
    parse_request(message)  # the same rules as the receiving side
    return message


def parse_request(message: CBORValue) -> tuple[list[Want], list[CID]]:
    """(wants, cancels) of a requester's message, or MalformedInput."""
    if not isinstance(message, dict) or not message or not set(message) <= {"want", "cancel"}:
        raise MalformedInput("a block request is {want?, cancel?}")
    raw_wants = message.get("want", [])
    raw_cancels = message.get("cancel", [])
    if not isinstance(raw_wants, list) or not isinstance(raw_cancels, list):
        raise MalformedInput("want and cancel must be lists")
    if any(key in message and not message[key] for key in ("want", "cancel")):
        raise MalformedInput("want and cancel lists must not be empty when present")
    if len(raw_wants) + len(raw_cancels) > MAX_ENTRIES:
        raise MalformedInput(f"a block request holds at most {MAX_ENTRIES} entries")
    cancels: list[CID] = []
    for cid in raw_cancels:
        if not isinstance(cid, CID):
            raise MalformedInput("a cancel entry is a CID")
        cancels.append(cid)
    wants: list[Want] = []
    for entry in raw_wants:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], CID)):
            raise MalformedInput("a want entry is [cid, auth | null]")
        auth = None if entry[1] is None else ReadAuth.from_cbor(entry[1])
        wants.append((entry[0], auth))
    return wants, cancels


def block_answer(cid: CID, data: bytes) -> CBORValue:
    return {"cid": cid, "kind": "block", "data": data}


def dont_have_answer(cid: CID) -> CBORValue:
    return {"cid": cid, "kind": "dont-have"}


def denied_answer(cid: CID, message: str) -> CBORValue:
    return {"cid": cid, "kind": "denied", "message": message[:MAX_DENIED_CHARS] or "denied"}


def answer_for(cid: CID, outcome: bytes | PyrgosError) -> CBORValue:
    """The answer to a want given the serving node's lookup: the block, Denied for Denied, and
    DontHave for every other failure (not stored, or not a good copy)."""
    if isinstance(outcome, bytes):
        return block_answer(cid, outcome)
    if isinstance(outcome, Denied):
        return denied_answer(cid, outcome.message)
    return dont_have_answer(cid)


@dataclass(frozen=True)
class Answer:
    cid: CID
    kind: Kind
    data: bytes | None = None  # the block, already checked against cid
    message: str | None = None  # why it was denied


def parse_answer(message: CBORValue) -> Answer:
    """A server's answer, or MalformedInput; a block that does not hash to its CID is
    Corrupted. All the rules a requester applies to an answer are here."""
    if not isinstance(message, dict) or not isinstance(message.get("cid"), CID):
        raise MalformedInput("a block answer is {cid, kind, …}")
    cid: CID = message["cid"]
    kind = message.get("kind")
    if not isinstance(kind, str):  # compared as text below; a bytes kind is simply malformed
        raise MalformedInput("an answer's kind is text")
    if kind == "block" and set(message) == {"cid", "kind", "data"}:
        data = message["data"]
        if not isinstance(data, bytes):
            raise MalformedInput("block data must be bytes")
        if len(data) > MAX_BLOCK_BYTES:
            raise TooLarge(f"a block is at most {MAX_BLOCK_BYTES} bytes")
        if not cid.matches(data):
            raise Corrupted(f"the block received for {cid} does not match its hash")
        return Answer(cid, "block", data=data)
    if kind == "dont-have" and set(message) == {"cid", "kind"}:
        return Answer(cid, "dont-have")
    if kind == "denied" and set(message) == {"cid", "kind", "message"}:
        text = message["message"]
        if not isinstance(text, str) or not 1 <= len(text) <= MAX_DENIED_CHARS:
            raise MalformedInput(f"a denial message is 1 to {MAX_DENIED_CHARS} characters")
        return Answer(cid, "denied", message=text)
    raise MalformedInput("a block answer is a block, dont-have or denied")


# --- the serving side ----------------------------------------------------------------------


class Responder:
    """The wants one requester has queued at this server, in arrival order.

    The caller feeds it received messages, takes wants with `next_want`, looks each block up
    (with the requester's Noise-authenticated id) and sends `answer_for(cid, outcome)`.
    """

    def __init__(self, max_queued: int = MAX_QUEUED) -> None:
        self.max_queued = max_queued
        self._queue: OrderedDict[CID, ReadAuth | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._queue)

    def receive(self, message: CBORValue) -> None:
        """Apply a requester's message: cancels, then wants. MalformedInput for garbage,
        TooLarge when the queue would hold more than max_queued wants."""
        wants, cancels = parse_request(message)
        for cid in cancels:
            self._queue.pop(cid, None)
        for cid, auth in wants:
            self._queue[cid] = auth  # a repeated want keeps its place, with the newer auth
        if len(self._queue) > self.max_queued:
            raise TooLarge(f"more than {self.max_queued} wants queued on one stream")

    def next_want(self) -> Want | None:
        """The oldest queued want, now the caller's to answer; None when the queue is empty."""
        if not self._queue:
            return None
        return self._queue.popitem(last=False)


# --- the requesting side -------------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    """The outcome of one want: the verified block, or why no source gave it."""

    cid: CID
    data: bytes | None = None
    error: PyrgosError | None = None


@dataclass(eq=False)  # wants are compared by identity in the retry queue
class _Want:
    cid: CID
    auth: ReadAuth | None
    source: int | None = None  # where it is outstanding
    tried: set[int] = field(default_factory=set)  # sources that refused it or failed with it
    denied: str | None = None
    failure: PyrgosError | None = None


@dataclass
class _Source:
    in_flight: dict[CID, None] = field(default_factory=dict)  # assigned, not answered
    want_out: dict[CID, None] = field(default_factory=dict)  # assigned, not yet sent
    cancel_out: dict[CID, None] = field(default_factory=dict)
    alive: bool = True


class Requester:
    """Fetches the blocks of `wants` (consumed lazily) from `sources` sources.

    The caller sends `outbound(i)` to source i, passes each message from source i to
    `receive(i, message)`, reports a source that failed (garbage, Corrupted, stall, disconnect)
    with `source_failed(i, error)`, and takes results from `next_result()` until `finished`.
    Every distinct CID wanted and not cancelled gets exactly one result (repeats are dropped).
    Each want goes to the source with the most free window; on DontHave, Denied or a failed
    source it moves to a source that has not refused it yet. It fails with Denied if
    any source denied it, Corrupted or Unavailable if a source failed with it, else NotFound.
    Memory: at most `window` open wants per source, the results not yet taken, and the set of
    CIDs read from `wants` (for the repeats; no blocks).
    """

    def __init__(
        self,
        wants: Iterable[Want],
        *,
        sources: int = 1,
        window: int = DEFAULT_WINDOW,
        authorize: AuthFor | None = None,
    ) -> None:
        if sources < 1:
            raise ValueError("a fetch needs at least one source")
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"the window is 1 to {MAX_WINDOW} wants")
        self.window = window
        self.strays = 0  # answers for CIDs not (or no longer) wanted from that source
        self._fresh: Iterator[Want] | None = iter(wants)
        self._authorize = authorize
        self._sources = [_Source() for _ in range(sources)]
        self._wants: dict[CID, _Want] = {}  # open wants: outstanding or waiting for a source
        self._retry: deque[_Want] = deque()  # open wants refused by a source, waiting again
        self._results: deque[Fetched] = deque()
        self._seen: set[CID] = set()  # every CID read from `wants`
        self._cancelled_early: set[CID] = set()  # cancelled before they were read from `wants`
        self._assign()

    # -- what the caller reads --

    @property
    def finished(self) -> bool:
        """Every want has a result and the caller has taken it."""
        return self._fresh is None and not self._wants and not self._results

    @property
    def ready(self) -> int:
        """Results settled and not yet taken with `next_result`."""
        return len(self._results)

    def in_flight(self, source: int) -> int:
        """Wants assigned to `source` and not answered (sent or about to be)."""
        return len(self._sources[source].in_flight)

    def alive(self, source: int) -> bool:
        return self._sources[source].alive

    def has_outbound(self, source: int) -> bool:
        """Whether `outbound(source)` has something to send now (see the module doc)."""
        src = self._sources[source]
        if not src.alive or not (src.want_out or src.cancel_out):
            return False
        return bool(
            src.cancel_out
            or len(src.want_out) >= max(1, self.window // WANT_BATCHES)
            or len(src.in_flight) < self.window  # nothing more to add: no batch will fill
        )

    def outbound(self, source: int) -> list[CBORValue]:
        """The messages to send to `source` now (cancels before wants), oldest first; none
        while its wants are still gathering into a batch."""
        src = self._sources[source]
        if not self.has_outbound(source):
            return []
        entries: list[tuple[bool, CID]] = [(True, cid) for cid in src.cancel_out]
        entries += [(False, cid) for cid in src.want_out]
        src.cancel_out.clear()
        src.want_out.clear()
        messages = []
        for start in range(0, len(entries), MAX_ENTRIES):
            chunk = entries[start : start + MAX_ENTRIES]
            cancels = [cid for is_cancel, cid in chunk if is_cancel]
            wants = [(cid, self._auth_at(source, cid)) for is_cancel, cid in chunk if not is_cancel]
            messages.append(request_message(wants, cancels))
        return messages

    def next_result(self) -> Fetched | None:
        """The next outcome, in the order they were settled; None if none is ready."""
        if not self._results and not any(src.alive for src in self._sources):
            want = self._pull_fresh()  # no source left: the rest fail, one at a time
            if want is not None:
                want.failure = Unavailable(f"no source is left to fetch block {want.cid} from")
                self._settle_failed(want)
        return self._results.popleft() if self._results else None

    # -- what the caller reports --

    def receive(self, source: int, message: CBORValue) -> None:
        """An answer from `source`. Raises MalformedInput, TooLarge or Corrupted: the caller
        then closes that stream and calls `source_failed`."""
        answer = parse_answer(message)
        src = self._sources[source]
        if not src.alive or answer.cid not in src.in_flight:
            self.strays += 1
            return
        del src.in_flight[answer.cid]
        src.want_out.pop(answer.cid, None)  # an answer to an earlier want of it will do
        want = self._wants[answer.cid]
        want.source = None
        if answer.kind == "block":
            del self._wants[answer.cid]
            self._results.append(Fetched(answer.cid, data=answer.data))
        else:
            want.tried.add(source)
            if answer.kind == "denied" and want.denied is None:
                want.denied = answer.message
            self._requeue(want)
        self._assign()

    def source_failed(self, source: int, error: PyrgosError) -> None:
        """`source` is gone; what it held moves to the other sources."""
        src = self._sources[source]
        if not src.alive:
            return
        src.alive = False
        held = [self._wants[cid] for cid in src.in_flight]
        src.in_flight.clear()
        src.want_out.clear()
        src.cancel_out.clear()
        if not isinstance(error, Corrupted):
            error = Unavailable(f"a source of the block failed: {error.message}")
        for want in held:
            want.source = None
            want.tried.add(source)
            want.failure = error
            self._requeue(want)
        for want in list(self._retry):  # some may have had only this source left
            if not self._candidates(want):
                self._retry.remove(want)
                self._settle_failed(want)
        self._assign()

    def cancel(self, cid: CID) -> None:
        """Stop fetching `cid`: no result for it is returned after this call."""
        for result in self._results:
            if result.cid == cid:
                self._results.remove(result)
                return
        want = self._wants.pop(cid, None)
        if want is None:
            if self._fresh is not None and cid not in self._seen:
                self._cancelled_early.add(cid)
            return
        if want.source is None:
            self._retry.remove(want)
        else:
            src = self._sources[want.source]
            del src.in_flight[cid]
            if cid in src.want_out:
                del src.want_out[cid]  # never sent: nothing to cancel
            else:
                src.cancel_out[cid] = None
        self._assign()

    # -- the rules of assignment --

    def _auth_at(self, source: int, cid: CID) -> ReadAuth | None:
        if self._authorize is not None:
            return self._authorize(source, cid)
        return self._wants[cid].auth

    def _candidates(self, want: _Want) -> list[int]:
        return [i for i, src in enumerate(self._sources) if src.alive and i not in want.tried]

    def _requeue(self, want: _Want) -> None:
        if self._candidates(want):
            self._retry.append(want)
        else:
            self._settle_failed(want)

    def _settle_failed(self, want: _Want) -> None:
        self._wants.pop(want.cid, None)
        error: PyrgosError
        if want.denied is not None:
            error = Denied(want.denied)
        elif want.failure is not None:
            error = want.failure
        else:
            error = NotFound(f"no source has block {want.cid}")
        self._results.append(Fetched(want.cid, error=error))

    def _pull_fresh(self) -> _Want | None:
        while self._fresh is not None:
            try:
                cid, auth = next(self._fresh)
            except StopIteration:
                self._fresh = None
                self._cancelled_early.clear()
                return None
            if cid in self._seen:
                continue
            self._seen.add(cid)
            if cid in self._cancelled_early:
                self._cancelled_early.discard(cid)
            elif cid.is_identity:  # an identity CID carries its block: nothing to fetch
                self._results.append(Fetched(cid, data=cid.digest))
            else:
                want = _Want(cid, auth)
                self._wants[cid] = want
                return want
        return None

    def _next_for(self, source: int) -> _Want | None:
        for want in self._retry:
            if source not in want.tried:
                self._retry.remove(want)
                return want
        return self._pull_fresh()

    def _assign(self) -> None:
        """Hand open wants to sources, one per source per round, roomiest source first, until
        every window is full or nothing is left that a source may take."""
        progress = True
        while progress:
            progress = False
            order = sorted(
                (i for i, src in enumerate(self._sources) if src.alive),
                key=lambda i: len(self._sources[i].in_flight),
            )
            for i in order:
                src = self._sources[i]
                if len(src.in_flight) >= self.window:
                    continue
                want = self._next_for(i)
                if want is None:
                    continue
                want.source = i
                src.in_flight[want.cid] = None
                src.want_out[want.cid] = None
                progress = True
