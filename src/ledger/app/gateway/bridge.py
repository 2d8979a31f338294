"""The gateway's way to the services: commands onto balance.operations, answers from
balance.events, and the request table that makes both survive a crash.

Every command the gateway sends is first a row of its request table (``requests`` in the
gateway's SQLite file): who asked, under which idempotency key, a digest of the request,
the command's (user, request_id) and its exact record. Then it is appended, and the row
gets the record's offset in balance.operations; then UBSCore's answer (the event whose
``input_offset`` is that offset) is written into the row. One thread, the writer, owns
the rows' creation and the appends, in batches (one transaction of the table and one
append per batch); another, the tailer, follows balance.events.

What a crash can leave, and how a restart mends it:

* a row with no offset (the gateway died around its append): the records appended since
  the row's ``ops_hint`` (the end of balance.operations known before that append) are
  searched for its record; found, the row gets that offset; not found, it is marked
  never sent (offset -1) and a retry sends it, with the same request id;
* a row with an offset and no answer: the tailer resumes balance.events from a saved
  position that is never past the answer of a command still being appended (the
  position saved while an append is in flight is the one the tailer had when it began),
  so the answer is met again and written;
* a row whose offset was found only by that search (at a restart, or when a retry finds
  an append whose outcome was not known): the tailer may have passed its answer already,
  so balance.events is searched for it (by ``input_offset``) once the offset is stored.

A retry is therefore never a second effect: the same idempotency key finds the row and
its answer, or its offset (and waits for the answer), or sends the same record again
(which UBSCore answers, inside its request window, with the original outcome).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from ledger.logs.base import Log, LogError
from ledger.protocol.codec import EVENTS, check_command
from ledger.protocol.commands import Command
from ledger.protocol.events import AssetListed, Rejected, SymbolListed

log = logging.getLogger("ledger.gateway")

# Request ids the gateway chooses are GATEWAY_REQUEST_ID_BASE + the request's row number,
# so they never meet a client's own ids (client order ids are 1..CLIENT_REQUEST_ID_MAX).
GATEWAY_REQUEST_ID_BASE = 2**62
CLIENT_REQUEST_ID_MAX = GATEWAY_REQUEST_ID_BASE - 1
# How long a request row (and so an idempotency key) is kept: at least the 24 hours
# clients are promised, and a day more.
REQUEST_ROWS_KEEP_S = 48 * 3600
PRUNE_EVERY_S = 600.0
# Commands per append, and how long a batch waits for more once its first is in.
SEND_BATCH_MAX = 500
SEND_BATCH_WAIT_S = 0.001
# Answers kept in memory by command offset, for requests whose answer arrives before
# the writer has recorded where their command went.
RECENT_ANSWERS_MAX = 100_000
# The tailer's pause when balance.events has nothing new.
TAIL_IDLE_S = 0.002
# Records read per tail step.
TAIL_READ_MAX = 5_000
# How long a request waits for the writer to take it (a stuck append: then 503).
SEND_WAIT_S_MAX = 60.0
# Commands waiting for the writer, at most: beyond (the log is slow or away), a command
# is refused at once (503: nothing was written, a retry is safe) instead of queueing.
JOBS_QUEUED_MAX = 10_000
# Offsets of balance.operations searched at most for the rows a crash left without one.
RESOLVE_SCAN_MAX = 1_000_000
# The search for a located row's answer: records of balance.events per read of one
# probe (events without an input_offset, such as settlements, are passed over), and
# records read at most by the scan that follows it.
ANSWER_PROBE_MAX = 1_000
ANSWER_SCAN_MAX = 1_000_000

NEVER_SENT = -1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    ref INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL,
    idem_key TEXT,
    digest BLOB NOT NULL,
    user INTEGER NOT NULL,
    request_id INTEGER NOT NULL,
    record BLOB,
    created_ms INTEGER NOT NULL,
    ops_hint INTEGER NOT NULL,
    "offset" INTEGER,
    answer BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS requests_by_key ON requests (scope, idem_key) WHERE idem_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS requests_by_offset ON requests ("offset");
CREATE TABLE IF NOT EXISTS gateway_tail (id INTEGER PRIMARY KEY CHECK (id = 1), events_offset INTEGER NOT NULL);
"""


class BridgeError(Exception):
    """The gateway cannot reach, or trust, the logs it works on."""


class OutcomeUnknown(BridgeError):
    """A command may have been written, or not: only a retry under its idempotency key
    (or its client order id) is safe."""


class Sent(msgspec.Struct, frozen=True):
    """Where a request stands once the writer has taken it.

    ``offset`` is the command's offset in balance.operations (None: not known, the
    append failed); ``answer`` the encoded event that answered it, if known yet;
    ``replayed`` is true when the request was an idempotent retry of an earlier one;
    ``conflict`` when the key was used before with another request (nothing sent).
    """

    ref: int
    request_id: int
    offset: int | None
    answer: bytes | None
    replayed: bool = False
    conflict: bool = False


class _Job:
    __slots__ = ("command", "scope", "idem_key", "digest", "client_request_id", "future", "loop", "sent")

    def __init__(
        self,
        command: Command,
        scope: str,
        idem_key: str | None,
        digest: bytes,
        client_request_id: int | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.command = command
        self.scope = scope
        self.idem_key = idem_key
        self.digest = digest
        self.client_request_id = client_request_id
        self.loop = loop
        self.future: asyncio.Future[Sent] = loop.create_future()
        self.sent: Sent | None = None


def request_digest(method: str, path: str, body: bytes) -> bytes:
    """What makes two requests under one idempotency key the same request."""
    return hashlib.blake2b(b"\n".join((method.upper().encode(), path.encode(), body)), digest_size=16).digest()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), isolation_level=None, timeout=30, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction (the connection is in autocommit mode otherwise). IMMEDIATE:
    the writer and the tailer take the write lock first, so neither works from a stale
    snapshot of the other's rows."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class Bridge:
    """Sends commands and waits for their answers, for an asyncio application.

    ``commands`` is balance.operations opened for writing, ``events`` and ``lookup``
    balance.events opened for reading (two readers: the tailer's and the one that finds
    an event by seq). ``on_listing`` is called (on the tailer thread) with every
    ``AssetListed`` and ``SymbolListed`` the tailer meets.
    """

    def __init__(
        self,
        db_path: str | Path,
        commands: Log,
        events: Log,
        lookup: Log,
        on_listing: Callable[[Any], None] | None = None,
    ) -> None:
        self.db_path = Path(db_path)
        self.commands = commands
        self.events = events
        self.lookup = lookup
        self.on_listing = on_listing
        # A Kafka log's poll takes what its consumer has fetched, without asking the broker
        # for the end first (read does: a round trip on every call of an idle tailer).
        self._tail_read: Callable[[int, int], Any] = getattr(events, "poll", None) or events.read
        self._db = _connect(self.db_path)
        self._db.executescript(_SCHEMA)
        self._tail_db = _connect(self.db_path)
        self._lock = threading.Lock()
        self._lookup_lock = threading.Lock()
        self._jobs: collections.deque[_Job] = collections.deque()
        self._jobs_ready = threading.Condition(threading.Lock())
        self._recent: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._waiters: dict[int, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[bytes]]]] = {}
        self._inflight_from: int | None = None
        # The highest input_offset the tailer has met (-1: none yet).
        self._answered_through = -1
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._known_end = 0
        self.tail_offset = 0
        self.sent_commands = 0
        self.answers_seen = 0
        self.failure: str | None = None
        self._last_prune = 0.0

    # -- life ---------------------------------------------------------------------------

    def start(self) -> None:
        """Mend what a crash left, then start the writer and the tailer."""
        self._known_end = self.commands.end_offset()
        row = self._db.execute("SELECT events_offset FROM gateway_tail WHERE id = 1").fetchone()
        self.tail_offset = row[0] if row else self.events.end_offset()
        if row is None:
            self._db.execute("INSERT INTO gateway_tail (id, events_offset) VALUES (1, ?)", (self.tail_offset,))
        self._resolve_unplaced()
        for target, name in ((self._write_loop, "gateway-writer"), (self._tail_loop, "gateway-tailer")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        with self._jobs_ready:
            self._jobs_ready.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)
        for item in (self.commands, self.events, self.lookup):
            try:
                item.close()
            except Exception:  # noqa: BLE001 (closing on the way out; nothing to do about it)
                log.debug("closing %s failed", getattr(item, "name", item), exc_info=True)
        self._db.close()
        self._tail_db.close()

    def _resolve_unplaced(self) -> None:
        """Rows a crash left without an offset: find their records in balance.operations
        (from the oldest row's hint on), in row order, or mark them never sent. Then the
        answers of every row with an offset and none, from balance.events: the tailer may
        have passed them (a row found here, or one found before a crash that came before
        its answer was looked for); the others are the tailer's still."""
        rows = self._db.execute(
            'SELECT ref, record, ops_hint FROM requests WHERE "offset" IS NULL AND record IS NOT NULL ORDER BY ref'
        ).fetchall()
        if rows:
            self._locate([(ref, bytes(record), hint) for ref, record, hint in rows])
        waiting = self._db.execute(
            'SELECT ref, "offset" FROM requests WHERE "offset" >= 0 AND answer IS NULL'
        ).fetchall()
        if waiting:
            self._answer_rows(waiting)

    def _answer_rows(self, rows: list[tuple[int, int]]) -> dict[int, bytes]:
        """Find the answers of ``rows`` (ref, offset: stored already) in balance.events and
        write them into the rows; returns offset -> answer for those found."""
        answers = self._find_answers([at for _, at in rows])
        if answers:
            with _transaction(self._db):
                self._db.executemany("UPDATE requests SET answer = ? WHERE ref = ? AND answer IS NULL",
                                     [(answers[at], ref) for ref, at in rows if at in answers])
        return answers

    def _locate(self, rows: list[tuple[int, bytes, int]]) -> dict[int, int]:
        """Find the records of ``rows`` (ref, record, ops_hint) in balance.operations, in
        row order; give each found row its offset, mark the others never sent. Returns
        ref -> offset (NEVER_SENT for the absent). Rows whose search would read more than
        ``RESOLVE_SCAN_MAX`` records are left as they are, with a warning."""
        end = self.commands.end_offset()
        far = [ref for ref, _, hint in rows if end - hint > RESOLVE_SCAN_MAX]
        if far:
            log.warning(
                "gateway: %d requests have no known offset and are older than the last %s records of "
                "balance.operations; left unresolved (a retry of them answers 503)", len(far), f"{RESOLVE_SCAN_MAX:,}"
            )
            rows = [row for row in rows if row[0] not in far]
        if not rows:
            return {}
        start = min(r[2] for r in rows)
        wanted: dict[bytes, collections.deque[int]] = collections.defaultdict(collections.deque)
        for ref, record, _ in rows:
            wanted[record].append(ref)
        found: list[tuple[int, int]] = []
        offset = start
        while offset < end and wanted:
            batch = self.commands.read(offset, TAIL_READ_MAX)
            if not batch.values:
                break
            for at, value in zip(batch.offsets, batch.values, strict=True):
                refs = wanted.get(bytes(value))
                if refs:
                    found.append((at, refs.popleft()))
                    if not refs:
                        del wanted[bytes(value)]
            offset = batch.next_offset
        lost = [ref for refs in wanted.values() for ref in refs]
        # Committed before anything looks for the answers: an answer appended after that
        # search has passed the log's end is then the tailer's, whose UPDATE by offset
        # finds the row.
        with _transaction(self._db):
            self._db.executemany('UPDATE requests SET "offset" = ? WHERE ref = ?', found)
            self._db.executemany('UPDATE requests SET "offset" = ? WHERE ref = ?', [(NEVER_SENT, r) for r in lost])
        log.warning(
            "gateway: %d requests without a known offset: %d found in balance.operations, %d never sent",
            len(rows),
            len(found),
            len(lost),
        )
        return {**{ref: at for at, ref in found}, **dict.fromkeys(lost, NEVER_SENT)}

    # -- sending ------------------------------------------------------------------------

    async def send(
        self,
        command: Command,
        scope: str,
        idem_key: str | None,
        digest: bytes,
        client_request_id: int | None,
    ) -> Sent:
        """Have ``command`` sent (its ``request_id`` set to ``client_request_id`` or one
        the gateway picks), or, for a key seen before, find the earlier request."""
        if self.failure:
            raise BridgeError(self.failure)
        job = _Job(command, scope, idem_key, digest, client_request_id, asyncio.get_running_loop())
        with self._jobs_ready:
            if len(self._jobs) >= JOBS_QUEUED_MAX:
                raise BridgeError(f"{JOBS_QUEUED_MAX:,} commands are waiting to be sent; nothing was written, retry")
            self._jobs.append(job)
            self._jobs_ready.notify()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), SEND_WAIT_S_MAX)
        except TimeoutError:
            with self._jobs_ready:
                try:
                    self._jobs.remove(job)  # not taken yet: it never will be
                except ValueError:
                    taken = True
                else:
                    taken = False
            if not taken:
                raise BridgeError(f"the gateway's writer did not take the command within {SEND_WAIT_S_MAX:g} s; "
                                  "nothing was written, retry") from None
            raise OutcomeUnknown(f"the command is being appended and has no outcome after {SEND_WAIT_S_MAX:g} s; "
                                 "retry with the same Idempotency-Key") from None

    def _take_jobs(self) -> list[_Job]:
        with self._jobs_ready:
            while not self._jobs and not self._stop.is_set():
                self._jobs_ready.wait(0.5)
            if self._stop.is_set():
                return []
        deadline = time.monotonic() + SEND_BATCH_WAIT_S
        while len(self._jobs) < SEND_BATCH_MAX and time.monotonic() < deadline:
            time.sleep(0.0002)
        jobs: list[_Job] = []
        with self._jobs_ready:
            while self._jobs and len(jobs) < SEND_BATCH_MAX:
                jobs.append(self._jobs.popleft())
        return jobs

    def _write_loop(self) -> None:
        while not self._stop.is_set():
            jobs = self._take_jobs()
            if not jobs:
                continue
            try:
                self._write(jobs)
            except Exception as error:  # noqa: BLE001 (every job is told; the thread goes on)
                log.error("gateway: sending a batch of %d failed: %s", len(jobs), error)
                for job in jobs:
                    job.loop.call_soon_threadsafe(_set_exception, job.future, BridgeError(str(error)))
            try:
                self._prune()
            except Exception as error:  # noqa: BLE001 (pruning again later is harmless)
                log.warning("gateway: pruning old request rows failed: %s", error)

    def _write(self, jobs: list[_Job]) -> None:
        db = self._db
        to_send: list[tuple[_Job, int, bytes]] = []  # job, ref, record
        # Per key in this batch: the row's digest, the job that owns the row's outcome
        # (None when the first job with the key conflicted), and the row as found.
        seen_keys: dict[tuple[str, str], tuple[bytes, _Job | None, Sent | None]] = {}
        followers: list[tuple[_Job, tuple[bytes, _Job | None, Sent | None]]] = []
        unplaced: list[tuple[_Job, int, bytes, int]] = []
        stale: list[tuple[_Job, int, int]] = []  # job, ref, offset
        now = _now_ms()
        with _transaction(db):
            for job in jobs:
                if job.idem_key is not None:
                    first = seen_keys.get((job.scope, job.idem_key))
                    if first is not None:
                        followers.append((job, first))
                        continue
                    row = db.execute(
                        'SELECT ref, digest, request_id, record, "offset", answer, ops_hint FROM requests '
                        "WHERE scope = ? AND idem_key = ?",
                        (job.scope, job.idem_key),
                    ).fetchone()
                    if row is not None:
                        ref, digest, request_id, record, offset, answer, hint = row
                        found = Sent(ref, request_id, offset, None if answer is None else bytes(answer), True)
                        if bytes(digest) != job.digest:
                            job.sent = Sent(ref, request_id, None, None, replayed=True, conflict=True)
                            seen_keys[(job.scope, job.idem_key)] = (bytes(digest), None, found)
                            continue
                        if offset == NEVER_SENT:
                            # Sent again: until its new offset is known it is a row to
                            # search for after a crash, from the end known now.
                            db.execute('UPDATE requests SET "offset" = NULL, ops_hint = ? WHERE ref = ?',
                                       (self._known_end, ref))
                            to_send.append((job, ref, bytes(record)))
                            job.sent = Sent(ref, request_id, None, None, replayed=True)
                        elif offset is None and answer is None:
                            # An append whose outcome was not known: look before sending.
                            unplaced.append((job, ref, bytes(record), hint))
                            job.sent = found
                        else:
                            job.sent = found
                            if answer is None and offset is not None and 0 <= offset <= self._answered_through:
                                # The tailer is past its answer and the row never got it (a
                                # search that failed, an answer evicted from _recent): look.
                                stale.append((job, ref, offset))
                        seen_keys[(job.scope, job.idem_key)] = (bytes(digest), job, found)
                        continue
                    seen_keys[(job.scope, job.idem_key)] = (job.digest, job, None)
                cursor = db.execute(
                    "INSERT INTO requests (scope, idem_key, digest, user, request_id, created_ms, ops_hint) "
                    "VALUES (?, ?, ?, ?, 0, ?, ?)",
                    (job.scope, job.idem_key, job.digest, getattr(job.command, "user", 0), now, self._known_end),
                )
                ref = cursor.lastrowid
                assert ref is not None
                request_id = job.client_request_id or GATEWAY_REQUEST_ID_BASE + ref
                command = msgspec.structs.replace(job.command, request_id=request_id)
                record = check_command(command)
                db.execute("UPDATE requests SET request_id = ?, record = ? WHERE ref = ?", (request_id, record, ref))
                job.sent = Sent(ref, request_id, None, None)
                to_send.append((job, ref, record))
        if unplaced:
            located = self._locate([(ref, record, hint) for _, ref, record, hint in unplaced])
            # The tailer may have passed their answers while their offsets were not known.
            answers = self._answer_rows([(ref, at) for ref, at in located.items() if at != NEVER_SENT])
            for job, ref, record, _ in unplaced:
                assert job.sent is not None
                at = located.get(ref)
                if at == NEVER_SENT:
                    with _transaction(db):
                        db.execute('UPDATE requests SET "offset" = NULL, ops_hint = ? WHERE ref = ?',
                                   (self._known_end, ref))
                    to_send.append((job, ref, record))
                elif at is not None:
                    job.sent = msgspec.structs.replace(job.sent, offset=at, answer=answers.get(at))
        if stale:
            answers = self._answer_rows([(ref, at) for _, ref, at in stale])
            for job, _, at in stale:
                assert job.sent is not None
                job.sent = msgspec.structs.replace(job.sent, answer=answers.get(at))
        offsets: list[int] = []
        if to_send:
            with self._lock:
                self._inflight_from = self.tail_offset
            try:
                first = self.commands.append([record for _, _, record in to_send])
                placement = getattr(self.commands, "last_append", None)
                offsets = list(placement.offsets) if placement is not None else []
                if len(offsets) != len(to_send):
                    offsets = [first + i for i in range(len(to_send))]
                self._known_end = offsets[-1] + 1
                self.sent_commands += len(to_send)
                with _transaction(db):
                    db.executemany(
                        'UPDATE requests SET "offset" = ? WHERE ref = ?',
                        [(at, ref) for at, (_, ref, _) in zip(offsets, to_send, strict=True)],
                    )
                    with self._lock:
                        answered = [(self._recent[at], ref) for at, (_, ref, _) in zip(offsets, to_send, strict=True)
                                    if at in self._recent]
                    db.executemany("UPDATE requests SET answer = ? WHERE ref = ? AND answer IS NULL", answered)
            except LogError as error:
                log.error("gateway: appending %d commands failed: %s", len(to_send), error)
                offsets = []
            finally:
                with self._lock:
                    self._inflight_from = None
            for (job, _, _), at in zip(to_send, offsets or [None] * len(to_send), strict=True):
                assert job.sent is not None
                job.sent = msgspec.structs.replace(job.sent, offset=at)
        for job, (digest, owner, found) in followers:
            if job.digest != digest:
                base = owner.sent if owner is not None else found
                assert base is not None
                job.sent = Sent(base.ref, base.request_id, None, None, replayed=True, conflict=True)
            elif owner is not None:
                assert owner.sent is not None
                job.sent = msgspec.structs.replace(owner.sent, replayed=True, conflict=False)
            else:
                job.sent = found
        for job in jobs:
            job.loop.call_soon_threadsafe(_set_result, job.future, job.sent)

    def _prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < PRUNE_EVERY_S:
            return
        self._last_prune = now
        cutoff = _now_ms() - REQUEST_ROWS_KEEP_S * 1000
        with _transaction(self._db):
            gone = self._db.execute(
                'DELETE FROM requests WHERE created_ms < ? AND (answer IS NOT NULL OR "offset" = ?)',
                (cutoff, NEVER_SENT),
            ).rowcount
        if gone:
            log.info("gateway: %d request rows older than %d h pruned", gone, REQUEST_ROWS_KEEP_S // 3600)

    # -- answers ------------------------------------------------------------------------

    async def answer(self, offset: int, timeout_s: float) -> bytes | None:
        """The encoded event answering the command at ``offset``, or None after
        ``timeout_s``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        with self._lock:
            known = self._recent.get(offset)
            if known is None:
                self._waiters.setdefault(offset, []).append((loop, future))
        if known is not None:
            return known
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            with self._lock:
                waiting = self._waiters.get(offset, [])
                if (loop, future) in waiting:
                    waiting.remove((loop, future))
                    if not waiting:
                        del self._waiters[offset]
            return None

    def stored(self, ref: int) -> tuple[str, int, int | None, bytes | None] | None:
        """(scope, request_id, offset, answer) of a request row, or None."""
        with _connect(self.db_path) as db:
            row = db.execute(
                'SELECT scope, request_id, "offset", answer FROM requests WHERE ref = ?', (ref,)
            ).fetchone()
        if row is None:
            return None
        scope, request_id, offset, answer = row
        return scope, request_id, offset, None if answer is None else bytes(answer)

    def lookup_end(self) -> int:
        """The end of balance.events (health: can the log be reached)."""
        with self._lookup_lock:
            return self.lookup.end_offset()

    def event_by_seq(self, seq: int) -> bytes:
        """The record of balance.events with ``seq`` (an original outcome a retry names)."""
        from ledger.app.services import _seq_of_event
        from ledger.app.streams import seek_seq

        with self._lookup_lock:
            offset = seek_seq(self.lookup, seq, _seq_of_event)
            batch = self.lookup.read(offset, 1)
        if not batch.values:
            raise BridgeError(f"balance.events has no event with seq {seq}")
        return bytes(batch.values[0])

    def _find_answers(self, offsets: list[int]) -> dict[int, bytes]:
        """The answers already in balance.events (command offset -> encoded event) of the
        commands at ``offsets`` of balance.operations, whose offsets are stored in their
        rows before this is called; those not found are left out. Only answers before the
        tailer's position can have been missed: from there on the tailer meets them and
        writes them into the rows by offset. So the search is bounded by that position: a
        binary search for the first answer at or after the smallest offset (input_offsets
        rise with event offsets; offsets are positions, markers leave holes), then a scan
        of at most ``ANSWER_SCAN_MAX`` records up to the largest.
        """
        wanted = {at for at in offsets if at >= 0}
        found: dict[int, bytes] = {}
        with self._lock:
            for at in list(wanted):
                known = self._recent.get(at)
                if known is not None:
                    found[at] = known
                    wanted.discard(at)
            # Read with _recent, under the lock the tailer moves it under: an answer from
            # here on is one the tailer has not yet written into the rows.
            limit = self.tail_offset
        if not wanted:
            return found
        smallest, largest = min(wanted), max(wanted)
        log_ = self.lookup
        read = 0
        try:
            with self._lookup_lock:
                # The smallest position whose first answer at or after it has an
                # input_offset of at least ``smallest`` (true from there on, false before);
                # ``offset`` is where that answer is: the scan starts on it, never before
                # a run of settlements ahead of it.
                low, high = 0, min(log_.end_offset(), limit)
                offset = high
                while low < high:
                    middle = (low + high) // 2
                    probe = self._probe_answer(middle, high)
                    if probe is None:
                        high = middle  # no answer in [middle, high): the next is at ``offset``
                    elif probe[1] >= smallest:
                        high, offset = middle, probe[0]
                    else:
                        low = probe[0] + 1
                while wanted and offset < limit and read < ANSWER_SCAN_MAX:
                    batch = log_.read(offset, TAIL_READ_MAX)
                    if not batch.values and batch.next_offset <= offset:
                        break
                    for at, raw in zip(batch.offsets, batch.values, strict=True):
                        value = bytes(raw)
                        input_offset = getattr(EVENTS.decode(value, f"{log_.name} offset {at}"), "input_offset", None)
                        if input_offset is None:
                            continue
                        if input_offset > largest or at >= limit:
                            wanted.clear()
                            break
                        if input_offset in wanted:
                            found[input_offset] = value
                            wanted.discard(input_offset)
                    read += len(batch.values)
                    offset = batch.next_offset
        except (LogError, ValueError) as error:
            log.warning("gateway: looking for the answers of %d located requests failed: %s", len(offsets), error)
            return found
        if wanted and read >= ANSWER_SCAN_MAX:
            log.warning("gateway: %d located requests have no answer in the %s records of %s searched; left pending",
                        len(wanted), f"{ANSWER_SCAN_MAX:,}", log_.name)
        return found

    def _probe_answer(self, offset: int, limit: int) -> tuple[int, int] | None:
        """(event offset, input_offset) of the first answer at or after ``offset`` and
        before ``limit`` of balance.events (read ``ANSWER_PROBE_MAX`` records at a time,
        past any run of events without an input_offset); None if there is none."""
        log_ = self.lookup
        while offset < limit:
            batch = log_.read(offset, min(ANSWER_PROBE_MAX, limit - offset))
            if not batch.values:
                if batch.next_offset <= offset:
                    return None
                offset = batch.next_offset
                continue
            for at, raw in zip(batch.offsets, batch.values, strict=True):
                if at >= limit:
                    return None
                input_offset = getattr(EVENTS.decode(bytes(raw), f"{log_.name} offset {at}"), "input_offset", None)
                if input_offset is not None:
                    return at, input_offset
            offset = batch.next_offset
        return None

    def _tail_loop(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._tail_step():
                    return
            except Exception as error:  # noqa: BLE001 (the tailer must not die: answers would stop)
                log.error("gateway: following balance.events at %d failed: %s; trying again", self.tail_offset, error)
                time.sleep(0.5)

    def _tail_step(self) -> bool:
        """One read of balance.events; False when the log cannot be trusted past here."""
        db = self._tail_db
        try:
            batch = self._tail_read(self.tail_offset, TAIL_READ_MAX)
        except LogError as error:
            log.warning("gateway: reading balance.events at %d failed: %s", self.tail_offset, error)
            time.sleep(0.5)
            return True
        if not batch.values and batch.next_offset == self.tail_offset:
            time.sleep(TAIL_IDLE_S)
            return True
        answers: list[tuple[bytes, int]] = []
        try:
            for raw in batch.values:
                value = bytes(raw)
                event = EVENTS.decode(value, f"{self.events.name} record")
                input_offset = getattr(event, "input_offset", None)
                if input_offset is not None:
                    answers.append((value, input_offset))
                if self.on_listing is not None and type(event) in (AssetListed, SymbolListed):
                    self.on_listing(event)
        except ValueError as error:
            self.failure = f"balance.events cannot be read past offset {self.tail_offset}: {error}"
            log.error("gateway: %s", self.failure)
            return False
        self.answers_seen += len(answers)
        with self._lock:
            recent = self._recent
            woken: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[bytes], bytes]] = []
            for value, at in answers:
                recent[at] = value
                if at > self._answered_through:
                    self._answered_through = at
                for loop, future in self._waiters.pop(at, ()):
                    woken.append((loop, future, value))
            while len(recent) > RECENT_ANSWERS_MAX:
                recent.popitem(last=False)
            self.tail_offset = batch.next_offset
            safe = self.tail_offset if self._inflight_from is None else self._inflight_from
        for loop, future, value in woken:
            loop.call_soon_threadsafe(_set_result, future, value)
        with _transaction(db):
            db.executemany('UPDATE requests SET answer = ? WHERE "offset" = ? AND answer IS NULL', answers)
            db.execute("UPDATE gateway_tail SET events_offset = ? WHERE id = 1", (safe,))
        return True

def is_duplicate(event: Any) -> bool:
    """A retry UBSCore recognised: its original outcome is at ``original_seq``."""
    return type(event) is Rejected and event.reason == 2 and event.original_seq > 0
