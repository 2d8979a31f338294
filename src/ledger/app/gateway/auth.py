"""Who sent a request: the gateway's authentication (Ed25519 signatures, see
``ledger.client.signing``) and authorisation (roles).

:meth:`Authenticator.authenticate` answers a :class:`Principal` or raises
:class:`AuthError` with an HTTP status and a stable code:

=====================  ======  ==========================================================
code                   status  meaning
=====================  ======  ==========================================================
missing_header         401     X-Ledger-Key, -Timestamp or -Signature is absent
duplicate_header       401     one of them is given twice
malformed_timestamp    401     not a decimal number of milliseconds (no sign or zeros)
malformed_signature    401     not 128 lower-case hex digits
malformed_request      401     a method or request target no signature can cover
signed_before_start    401     signed before this authenticator started (see below)
stale_timestamp        401     older than the receive window allows
future_timestamp       401     further ahead than the receive window allows
unknown_key            401     no such key id
revoked_key            401     the key was revoked
bad_signature          401     the signature does not verify
replayed               401     this very request was already accepted
rate_limited           429     the key's token bucket is empty (``retry_after_s`` set)
replay_cache_full      503     too many live signatures to remember (``retry_after_s`` set)
operator_only          403     the action needs an operator key
trader_only            403     the action is a trader's own (operators do not trade)
not_your_account       403     a trader key acting on or reading another user
=====================  ======  ==========================================================

The checks run cheapest first (headers, forms, the clock, the key lookup, then the
signature), and only a request whose signature verifies touches any state: it alone is
remembered against replay and spends its key's rate budget. A forged request costs one
key lookup and at most one signature check, and changes nothing.

Replay. The timestamp must lie within ``recv_window_ms`` of the gateway's clock, either
way. Every request whose signature verifies is remembered (by its key and the digest of
its signed message) until its timestamp leaves the window, after which the clock check
refuses it anyway; so a request is accepted at most once, whatever refusal (a 429, say)
answered it. To retry, sign again. Nothing is forgotten early: past ``REPLAY_CACHE_MAX``
remembered requests a new one is refused with 503 until old ones expire. A request signed
before the authenticator started is refused, so a restart, which empties the memory,
cannot be used to replay a request the previous process accepted. The memory is per
process: gateway processes that share keys must each see a request at most once, so run
one gateway process per set of keys (or route each key to one process).

The clock only moves forward here: if the system clock steps back, this authenticator's
time stands still until it catches up, so nothing remembered is forgotten early.

Roles (see ``ledger.app.gateway.keys``): a trader key acts for its own user only, and
reads only that user's account (:func:`require_user`, :func:`require_reader`). An
operator key does the exchange's own work, deposits, withdrawals and listings
(:func:`require_operator`), and may read any account; it places and cancels no orders.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import threading
import time
from collections.abc import Callable, Mapping

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.app.gateway.keys import ApiKey, KeyStore, KeyStoreError, Role
from ledger.app.gateway.limits import RATE_BURST_DEFAULT, RATE_LIMIT_PER_S_DEFAULT, RECV_WINDOW_MS_DEFAULT
from ledger.client.signing import (
    HEADER_KEY,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    is_key_id,
    is_signature,
    parse_timestamp,
    public_key_from_hex,
    signed_message,
)

# Long enough for a client on a synchronised clock across a slow network (Binance's
# default too), short enough that a captured request goes stale quickly.
# The window bounds how long a signature must be remembered, so it has a ceiling.
RECV_WINDOW_MS_MAX = 60_000
# Per key: a trading bot's steady rate, and the burst it may send at once.
# Accepted requests remembered against replay, at most: 100k requests in a 5 s window is
# far above what the exchange takes, and some 20 MB of memory.
REPLAY_CACHE_MAX = 100_000
# A key (and whether it is revoked) is re-read from the database after this long, so a
# revocation by another process takes effect within it.
KEY_CACHE_S = 1.0

STATUS: dict[str, int] = {
    "missing_header": 401,
    "duplicate_header": 401,
    "malformed_timestamp": 401,
    "malformed_signature": 401,
    "malformed_request": 401,
    "signed_before_start": 401,
    "stale_timestamp": 401,
    "future_timestamp": 401,
    "unknown_key": 401,
    "revoked_key": 401,
    "bad_signature": 401,
    "replayed": 401,
    "rate_limited": 429,
    "replay_cache_full": 503,
    "operator_only": 403,
    "trader_only": 403,
    "not_your_account": 403,
}
_HEADERS = (HEADER_KEY, HEADER_TIMESTAMP, HEADER_SIGNATURE)


class AuthError(Exception):
    """A refused request: the HTTP ``status``, a stable ``code`` (see ``STATUS``) and a
    one-line ``message`` for the client. ``retry_after_s`` is set for 429 and 503 (send
    it as ``Retry-After``, rounded up to whole seconds)."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


def _refuse(code: str, message: str, retry_after_s: float | None = None) -> AuthError:
    return AuthError(STATUS[code], code, message, retry_after_s)


class Principal(msgspec.Struct, frozen=True):
    """Who signed a request: the key, the user it acts for (0 for an operator), its role."""

    key_id: str
    user: int
    role: Role


def request_target(raw_path: bytes, query_string: bytes) -> str:
    """The request target a client signed, from an ASGI scope's ``raw_path`` and
    ``query_string``: the path as sent (not percent-decoded), and ``?query`` if any."""
    target = raw_path.decode("latin-1")
    return f"{target}?{query_string.decode('latin-1')}" if query_string else target


def _auth_headers(headers: Mapping[str, str]) -> tuple[str, str, str]:
    """The key id, timestamp and signature headers, each given exactly once (names in any
    case; a Starlette ``Headers`` lists a repeated header once per copy)."""
    wanted = {name.lower(): name for name in _HEADERS}
    found: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in wanted:
            if lowered in found:
                raise _refuse("duplicate_header", f"{wanted[lowered]} is given more than once")
            found[lowered] = value
    missing = [name for lowered, name in wanted.items() if lowered not in found]
    if missing:
        raise _refuse("missing_header", f"missing {', '.join(missing)}: every request must be signed")
    return found[HEADER_KEY.lower()], found[HEADER_TIMESTAMP.lower()], found[HEADER_SIGNATURE.lower()]


class _CachedKey(msgspec.Struct):
    key: ApiKey
    public: Ed25519PublicKey | None  # None once revoked: it verifies nothing
    fetched_s: float


class _Bucket(msgspec.Struct):
    tokens: float
    updated_ms: int


class Authenticator:
    """Authenticates signed requests against ``keys`` (see the module docstring). Safe to
    call from an event loop and from threads at once."""

    def __init__(
        self,
        keys: KeyStore,
        recv_window_ms: int = RECV_WINDOW_MS_DEFAULT,
        rate_per_s: float = RATE_LIMIT_PER_S_DEFAULT,
        burst: int = RATE_BURST_DEFAULT,
        clock: Callable[[], float] = time.time,
        replay_cache_max: int = REPLAY_CACHE_MAX,
        key_cache_s: float = KEY_CACHE_S,
    ) -> None:
        if not 1 <= recv_window_ms <= RECV_WINDOW_MS_MAX:
            raise ValueError(f"recv_window_ms: must be 1..{RECV_WINDOW_MS_MAX}, got {recv_window_ms}")
        if not (math.isfinite(rate_per_s) and rate_per_s > 0):
            raise ValueError(f"rate_per_s: must be a positive number, got {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst: must be at least 1, got {burst}")
        if not 1 <= replay_cache_max <= REPLAY_CACHE_MAX:
            raise ValueError(f"replay_cache_max: must be 1..{REPLAY_CACHE_MAX}, got {replay_cache_max}")
        if not 0 <= key_cache_s <= KEY_CACHE_S:
            raise ValueError(f"key_cache_s: must be 0..{KEY_CACHE_S}, got {key_cache_s}")
        self.keys = keys
        self.recv_window_ms = recv_window_ms
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.replay_cache_max = replay_cache_max
        self.key_cache_s = key_cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._now_ms = math.floor(clock() * 1000)
        self.started_ms = self._now_ms
        self._seen: dict[bytes, int] = {}  # digest of an accepted request -> its timestamp
        self._expiry: list[tuple[int, bytes]] = []  # the same, as a heap by timestamp
        self._buckets: dict[str, _Bucket] = {}
        self._cache: dict[str, _CachedKey] = {}

    def authenticate(self, method: str, path_with_query: str, headers: Mapping[str, str], body: bytes) -> Principal:
        """The principal that signed this request; AuthError if it may not be served."""
        key_id, stamp, signature = _auth_headers(headers)
        try:
            timestamp_ms = parse_timestamp(stamp)
        except ValueError as error:
            raise _refuse("malformed_timestamp", f"{HEADER_TIMESTAMP}: {error}") from None
        if not is_signature(signature):
            raise _refuse("malformed_signature", f"{HEADER_SIGNATURE}: must be 128 lower-case hex digits")
        try:
            message = signed_message(timestamp_ms, method, path_with_query, body)
        except ValueError as error:
            raise _refuse("malformed_request", f"the request cannot be signed: {error}") from None
        now_ms = self._tick()
        self._check_time(timestamp_ms, now_ms)
        public, key = self._live_key(key_id)
        try:
            public.verify(bytes.fromhex(signature), message)
        except InvalidSignature:
            raise _refuse(
                "bad_signature", f"the signature does not verify for key {key_id} (sign exactly the bytes sent)"
            ) from None
        digest = hashlib.blake2b(key_id.encode() + b"\n" + message, digest_size=32).digest()
        self._admit(key_id, digest, timestamp_ms, now_ms)
        return Principal(key_id=key.key_id, user=key.user, role=key.role)

    def _tick(self) -> int:
        """Now in milliseconds, never earlier than any now before it."""
        now_ms = math.floor(self._clock() * 1000)
        with self._lock:
            self._now_ms = max(self._now_ms, now_ms)
            return self._now_ms

    def _check_time(self, timestamp_ms: int, now_ms: int) -> None:
        window = self.recv_window_ms
        if timestamp_ms < self.started_ms:
            raise _refuse(
                "signed_before_start",
                f"signed at {timestamp_ms}, before this gateway started ({self.started_ms}); sign the request again",
            )
        if timestamp_ms < now_ms - window:
            raise _refuse(
                "stale_timestamp",
                f"signed {now_ms - timestamp_ms} ms ago; the receive window is {window} ms "
                "(sign just before sending, on a synchronised clock)",
            )
        if timestamp_ms > now_ms + window:
            raise _refuse(
                "future_timestamp",
                f"signed {timestamp_ms - now_ms} ms in the future; the receive window is {window} ms "
                "(synchronise the client's clock)",
            )

    def _live_key(self, key_id: str) -> tuple[Ed25519PublicKey, ApiKey]:
        """The public key of a live ``key_id``, read from the database at most
        ``key_cache_s`` ago."""
        if not is_key_id(key_id):
            raise _refuse("unknown_key", f"{HEADER_KEY}: no such key (a key id is k and 20 hex digits)")
        cached = self._cached(key_id)
        if cached is None:
            cached = self._fetch(key_id)
        if cached.public is None:
            raise _refuse("revoked_key", f"key {key_id} was revoked")
        return cached.public, cached.key

    def _cached(self, key_id: str) -> _CachedKey | None:
        raw_s = self._clock()
        with self._lock:
            cached = self._cache.get(key_id)
        if cached is None:
            return None
        # Revocation is final, so a revoked key need never be read again.
        fresh = cached.public is None or 0 <= raw_s - cached.fetched_s < self.key_cache_s
        return cached if fresh else None

    def _fetch(self, key_id: str) -> _CachedKey:
        fetched_s = self._clock()
        key = self.keys.get(key_id)
        if key is None:
            # Not cached: only keys that exist take memory, whatever ids strangers send.
            raise _refuse("unknown_key", f"{HEADER_KEY}: no such key {key_id}")
        with self._lock:
            before = self._cache.get(key_id)
        public: Ed25519PublicKey | None = None
        if key.live:
            if before is not None and before.public is not None and before.key.public_key == key.public_key:
                public = before.public  # checking a key costs a few hundred microseconds: once is enough
            else:
                try:
                    public = public_key_from_hex(key.public_key)
                except ValueError as error:
                    raise KeyStoreError(f"{self.keys.path}: key {key_id} holds a bad public key: {error}") from None
        cached = _CachedKey(key=key, public=public, fetched_s=fetched_s)
        with self._lock:
            self._cache[key_id] = cached
        return cached

    def _admit(self, key_id: str, digest: bytes, timestamp_ms: int, now_ms: int) -> None:
        """Remember an authentic request and spend a token of its key's budget."""
        with self._lock:
            self._forget_expired(now_ms)
            if digest in self._seen:
                raise _refuse("replayed", "this request was already received; sign a new one to send it again")
            if len(self._seen) >= self.replay_cache_max:
                oldest_ms = self._expiry[0][0]
                wait_s = (oldest_ms + self.recv_window_ms + 1 - now_ms) / 1000
                raise _refuse("replay_cache_full", "the gateway is at its limit of requests in flight", wait_s)
            self._seen[digest] = timestamp_ms
            heapq.heappush(self._expiry, (timestamp_ms, digest))
            self._spend(key_id, now_ms)

    def _forget_expired(self, now_ms: int) -> None:
        """Forget requests whose timestamp left the window (the clock check refuses them)."""
        horizon_ms = now_ms - self.recv_window_ms
        while self._expiry and self._expiry[0][0] < horizon_ms:
            _, digest = heapq.heappop(self._expiry)
            del self._seen[digest]

    def _spend(self, key_id: str, now_ms: int) -> None:
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = _Bucket(tokens=float(self.burst), updated_ms=now_ms)
        refill = (now_ms - bucket.updated_ms) * self.rate_per_s / 1000
        bucket.tokens = min(float(self.burst), bucket.tokens + refill)
        bucket.updated_ms = now_ms
        if bucket.tokens < 1:
            wait_s = (1 - bucket.tokens) / self.rate_per_s
            raise _refuse(
                "rate_limited",
                f"key {key_id} is over its rate limit ({self.rate_per_s:g} requests/s, bursts of {self.burst}); "
                f"retry in {wait_s:.3f} s",
                wait_s,
            )
        bucket.tokens -= 1


def require_operator(principal: Principal) -> None:
    """Deposits, withdrawals, listings: the exchange's own work, for operator keys only."""
    if principal.role != "operator":
        raise _refuse("operator_only", f"this needs an operator key; {principal.key_id} is a trader key")


def require_user(principal: Principal, user: int) -> None:
    """Placing and cancelling orders for ``user``: only a trader key of that user."""
    if principal.role != "trader":
        raise _refuse("trader_only", f"operators do not trade; {principal.key_id} is an operator key")
    if principal.user != user:
        raise _refuse("not_your_account", f"key {principal.key_id} acts for user {principal.user}, not user {user}")


def require_reader(principal: Principal, user: int) -> None:
    """Reading ``user``'s balances and orders: a trader key of that user, or an operator."""
    if principal.role != "operator" and principal.user != user:
        raise _refuse("not_your_account", f"key {principal.key_id} reads user {principal.user} only, not user {user}")
