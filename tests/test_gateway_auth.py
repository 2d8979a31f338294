"""The gateway's authentication: a request is served only when signed by a live key,
within the receive window, once; a key's budget is spent only by its own authentic
requests; memory stays bounded; keys are managed by ``ledger keys`` without a secret
ever being stored or listed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.app.gateway.auth import (
    KEY_CACHE_S,
    RECV_WINDOW_MS_DEFAULT,
    STATUS,
    Authenticator,
    AuthError,
    Principal,
    request_target,
    require_operator,
    require_reader,
    require_user,
)
from ledger.app.gateway.keys import LABEL_CHARS_MAX, OPERATOR_USER, ApiKey, KeyStore, KeyStoreError
from ledger.client.signing import (
    HEADER_KEY,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    check_public_key,
    generate_key,
    public_key_of,
    sign,
    sign_headers,
    signed_message,
    verify,
)
from ledger.protocol.limits import USER_ID_MAX

ROOT = Path(__file__).resolve().parent.parent
START_S = 1_700_000_000.0
PATH = "/v1/orders?symbol=BTC-USDT&dry=1"
BODY = b'{"side":"buy","qty":3}'
# The identity point: OpenSSL verifies (R = identity, S = 0) under it for every message.
IDENTITY_KEY = "01" + "00" * 31


class Clock:
    """A clock the test moves by hand (seconds, like time.time)."""

    def __init__(self, now_s: float = START_S) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds

    @property
    def ms(self) -> int:
        return round(self.now_s * 1000)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> KeyStore:
    keys = KeyStore(tmp_path / "gateway.db", clock=clock)
    yield keys
    keys.close()


@pytest.fixture
def trader(store: KeyStore) -> tuple[ApiKey, str]:
    return store.create(1001, "trader", "bot")


def _request(key: ApiKey, private: str, clock: Clock, method: str = "POST", path: str = PATH, body: bytes = BODY,
             timestamp_ms: int | None = None) -> dict[str, str]:
    return sign_headers(key.key_id, private, method, path, body, clock.ms if timestamp_ms is None else timestamp_ms)


def _refusal(auth: Authenticator, headers: dict[str, str], method: str = "POST", path: str = PATH,
             body: bytes = BODY) -> AuthError:
    with pytest.raises(AuthError) as caught:
        auth.authenticate(method, path, headers, body)
    assert caught.value.status == STATUS[caught.value.code]
    return caught.value


# -- signing ----------------------------------------------------------------------------


def test_the_signed_message_is_the_documented_bytes() -> None:
    message = signed_message(1_700_000_000_123, "delete", "/v1/orders/7?x=%20y", b"\x00\nbody\n")
    assert message == b"ledger-request-v1\n1700000000123\nDELETE\n/v1/orders/7?x=%20y\n\x00\nbody\n"
    assert signed_message(0, "GET", "/", b"") == b"ledger-request-v1\n0\nGET\n/\n"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((-1, "GET", "/", b""), "timestamp"),
        ((2**63, "GET", "/", b""), "timestamp"),
        ((True, "GET", "/", b""), "timestamp"),
        ((1, "", "/", b""), "method"),
        ((1, "GE T", "/", b""), "method"),
        ((1, "GET\n", "/", b""), "method"),
        ((1, "GET", "v1/orders", b""), "path"),
        ((1, "GET", "/a b", b""), "path"),
        ((1, "GET", "/a\nb", b""), "path"),
        ((1, "GET", "/caf\u00e9", b""), "path"),
        ((1, "GET", "/" + "a" * 9000, b""), "path"),
        ((1, "GET", "/", "text"), "body"),
    ],
)
def test_a_part_no_signature_can_cover_unambiguously_is_refused(args: tuple, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        signed_message(*args)


def test_sign_and_verify_round_trip() -> None:
    private, public = generate_key()
    assert public_key_of(private) == public and len(private) == len(public) == 64
    headers = sign(private, 1_700_000_000_000, "POST", PATH, BODY)
    assert headers[HEADER_TIMESTAMP] == "1700000000000"
    signature = headers[HEADER_SIGNATURE]
    assert len(signature) == 128 and signature == signature.lower()
    message = signed_message(1_700_000_000_000, "POST", PATH, BODY)
    assert verify(public, signature, message)
    assert verify(public.upper(), signature, message)
    assert not verify(public, signature.upper(), message)  # one spelling of a signature, not two
    assert not verify(public, signature[:-2], message)
    assert not verify(generate_key()[1], signature, message)


def test_sign_headers_names_the_key_and_signs_now_by_default() -> None:
    private, _ = generate_key()
    headers = sign_headers("k" + "ab" * 10, private, "GET", "/v1/balances", b"")
    assert set(headers) == {HEADER_KEY, HEADER_TIMESTAMP, HEADER_SIGNATURE}
    assert headers[HEADER_KEY] == "k" + "ab" * 10
    with pytest.raises(ValueError, match="^key id:"):
        sign_headers("bogus", private, "GET", "/", b"")


@pytest.mark.parametrize(
    ("material", "problem"),
    [("ab" * 31, "64 hex digits"), ("zz" * 32, "not hexadecimal"), ("", "64 hex digits")],
)
def test_bad_key_material_says_what_is_wrong(material: str, problem: str) -> None:
    with pytest.raises(ValueError, match=f"^private key: .*{problem}"):
        public_key_of(material)
    with pytest.raises(ValueError, match=f"^public key: .*{problem}"):
        verify(material, "00" * 64, b"")


@pytest.mark.parametrize(
    "public",
    [
        IDENTITY_KEY,
        "00" * 32,  # a point of order 4
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # a point of order 8
        "ec" + "ff" * 30 + "7f",  # y = p - 1 + ... : not canonical
        "ff" * 32,
    ],
)
def test_a_key_anyone_could_sign_for_is_refused(public: str) -> None:
    with pytest.raises(ValueError, match="^public key: not a usable Ed25519 public key"):
        check_public_key(public)
    with pytest.raises(ValueError):
        verify(public, "01" + "00" * 63, b"anything")


def test_the_documented_test_vector_holds() -> None:
    """docs/gateway-auth.md gives implementers in other languages a vector to check against."""
    doc = (ROOT / "docs" / "gateway-auth.md").read_text()
    vector = dict(line.split(None, 1) for line in doc.split("Test vector")[1].split("```")[1].strip().splitlines()
                  if not line.startswith("message"))
    message_hex = doc.split("message (hex) ")[1].split()[0]
    timestamp_ms, method, target = int(vector["timestamp"]), vector["method"], vector["target"]
    body = vector["body"].encode()
    assert public_key_of(vector["private"].split()[-1]) == vector["public"].split()[-1]
    assert signed_message(timestamp_ms, method, target, body).hex() == message_hex
    headers = sign(vector["private"].split()[-1], timestamp_ms, method, target, body)
    assert headers[HEADER_SIGNATURE] == vector["signature"]


_KEY = generate_key()
_MESSAGE_PARTS = st.tuples(
    st.integers(0, 2**63 - 1),
    st.sampled_from(["GET", "POST", "DELETE", "PUT"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60).map(lambda tail: "/" + tail),
    st.binary(max_size=200),
)


@settings(max_examples=300, deadline=None)
@given(parts=_MESSAGE_PARTS, data=st.data())
def test_any_single_byte_change_to_the_signed_message_fails_verification(parts: tuple, data: st.DataObject) -> None:
    private, public = _KEY
    message = signed_message(*parts)
    signature = sign(private, *parts)[HEADER_SIGNATURE]
    assert verify(public, signature, message)
    at = data.draw(st.integers(0, len(message) - 1), label="at")
    new = data.draw(st.integers(0, 255).filter(lambda byte: byte != message[at]), label="byte")
    changed = message[:at] + bytes([new]) + message[at + 1 :]
    assert not verify(public, signature, changed)


# -- authentication ---------------------------------------------------------------------


def test_a_signed_request_names_its_principal(store: KeyStore, trader: tuple[ApiKey, str], clock: Clock) -> None:
    key, private = trader
    auth = Authenticator(store, clock=clock)
    principal = auth.authenticate("POST", PATH, _request(key, private, clock), BODY)
    assert principal == Principal(key_id=key.key_id, user=1001, role="trader")
    # Header names in any case; the method in any case.
    lowered = {name.lower(): value for name, value in _request(key, private, clock, path="/v1/x").items()}
    assert auth.authenticate("post", "/v1/x", lowered, BODY).user == 1001


@pytest.mark.parametrize("header", [HEADER_KEY, HEADER_TIMESTAMP, HEADER_SIGNATURE])
def test_a_missing_header_is_refused(store: KeyStore, trader: tuple[ApiKey, str], clock: Clock, header: str) -> None:
    key, private = trader
    headers = _request(key, private, clock)
    del headers[header]
    error = _refusal(Authenticator(store, clock=clock), headers)
    assert (error.status, error.code) == (401, "missing_header") and header in error.message


def test_a_header_given_twice_is_refused(store: KeyStore, trader: tuple[ApiKey, str], clock: Clock) -> None:
    from starlette.datastructures import Headers

    key, private = trader
    auth = Authenticator(store, clock=clock)
    headers = _request(key, private, clock)
    twice = headers | {HEADER_KEY.lower(): headers[HEADER_KEY]}
    assert _refusal(auth, twice).code == "duplicate_header"
    # As the gateway sees them: Starlette's headers, one entry per copy sent.
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    error = _refusal(auth, Headers(raw=[*raw, raw[0]]))
    assert (error.status, error.code) == (401, "duplicate_header")
    assert auth.authenticate("POST", PATH, Headers(raw=raw), BODY).user == 1001


@pytest.mark.parametrize("key_id", ["k" + "0" * 20, "nonsense", "", "K" + "A" * 20])
def test_an_unknown_key_is_refused(store: KeyStore, trader: tuple[ApiKey, str], clock: Clock, key_id: str) -> None:
    key, private = trader
    headers = _request(key, private, clock) | {HEADER_KEY: key_id}
    error = _refusal(Authenticator(store, clock=clock), headers)
    assert (error.status, error.code) == (401, "unknown_key")


def test_a_key_revoked_by_another_process_is_refused_within_the_key_cache_time(
    tmp_path: Path, store: KeyStore, trader: tuple[ApiKey, str], clock: Clock
) -> None:
    key, private = trader
    auth = Authenticator(store, clock=clock)
    assert auth.authenticate("POST", PATH, _request(key, private, clock), BODY).key_id == key.key_id
    with KeyStore(tmp_path / "gateway.db", create=False, clock=clock) as other:  # as `ledger keys revoke` does
        assert other.revoke(key.key_id).revoked_ms == clock.ms
    clock.advance(KEY_CACHE_S)
    error = _refusal(auth, _request(key, private, clock))
    assert (error.status, error.code) == (401, "revoked_key")
    # With no cache at all, at once.
    second, second_private = store.create(1002, "trader")
    immediate = Authenticator(store, clock=clock, key_cache_s=0)
    immediate.authenticate("POST", PATH, _request(second, second_private, clock), BODY)
    store.revoke(second.key_id)
    assert _refusal(immediate, _request(second, second_private, clock, body=b"{}"), body=b"{}").code == "revoked_key"


@pytest.mark.parametrize("stamp", ["", "abc", "-5", "+5", "0012", "1.5", " 12", "12 ", "\u0661\u0662", "9" * 20])
def test_a_malformed_timestamp_is_refused(store: KeyStore, trader: tuple[ApiKey, str], clock: Clock,
                                          stamp: str) -> None:
    key, private = trader
    headers = _request(key, private, clock) | {HEADER_TIMESTAMP: stamp}
    error = _refusal(Authenticator(store, clock=clock), headers)
    assert (error.status, error.code) == (401, "malformed_timestamp")


@pytest.mark.parametrize("signature", ["", "zz" * 64, "AB" * 64, "ab" * 63, "ab" * 65])
def test_a_malformed_signature_is_refused(store: KeyStore, trader: tuple[ApiKey, str], clock: Clock,
                                          signature: str) -> None:
    key, private = trader
    headers = _request(key, private, clock) | {HEADER_SIGNATURE: signature}
    error = _refusal(Authenticator(store, clock=clock), headers)
    assert (error.status, error.code) == (401, "malformed_signature")


def test_a_request_no_signature_could_cover_is_refused(store: KeyStore, trader: tuple[ApiKey, str],
                                                       clock: Clock) -> None:
    key, private = trader
    headers = _request(key, private, clock)
    error = _refusal(Authenticator(store, clock=clock), headers, path="/caf\u00e9")
    assert (error.status, error.code) == (401, "malformed_request")


def test_a_stale_or_future_timestamp_is_refused_saying_by_how_much(
    store: KeyStore, trader: tuple[ApiKey, str], clock: Clock
) -> None:
    key, private = trader
    auth = Authenticator(store, clock=clock)
    signed_ms = clock.ms
    clock.advance((RECV_WINDOW_MS_DEFAULT + 250) / 1000)
    stale = _refusal(auth, _request(key, private, clock, timestamp_ms=signed_ms))
    assert (stale.status, stale.code) == (401, "stale_timestamp")
    assert f"{RECV_WINDOW_MS_DEFAULT + 250} ms ago" in stale.message and f"{RECV_WINDOW_MS_DEFAULT} ms" in stale.message
    ahead_ms = clock.ms + RECV_WINDOW_MS_DEFAULT + 1
    future = _refusal(auth, _request(key, private, clock, timestamp_ms=ahead_ms))
    assert (future.status, future.code) == (401, "future_timestamp")
    assert f"{RECV_WINDOW_MS_DEFAULT + 1} ms in the future" in future.message
    # The window's edges are inside it.
    for edge_ms in (clock.ms - RECV_WINDOW_MS_DEFAULT, clock.ms + RECV_WINDOW_MS_DEFAULT):
        auth.authenticate("POST", PATH, _request(key, private, clock, timestamp_ms=edge_ms), BODY)


@pytest.mark.parametrize("part", ["method", "path", "query", "body", "timestamp"])
def test_tampering_with_any_signed_part_breaks_the_signature(
    store: KeyStore, trader: tuple[ApiKey, str], clock: Clock, part: str
) -> None:
    key, private = trader
    headers = _request(key, private, clock)
    method, path, body = "POST", PATH, BODY
    if part == "method":
        method = "PUT"
    elif part == "path":
        path = PATH.replace("/v1/orders", "/v1/order")
    elif part == "query":
        path = PATH.replace("dry=1", "dry=0")
    elif part == "body":
        body = BODY.replace(b"3", b"4")
    else:
        headers[HEADER_TIMESTAMP] = str(clock.ms + 1)
    error = _refusal(Authenticator(store, clock=clock), headers, method, path, body)
    assert (error.status, error.code) == (401, "bad_signature")


def test_a_signature_by_another_key_is_refused(store: KeyStore, trader: tuple[ApiKey, str], clock: Clock) -> None:
    key, _ = trader
    other_private, _ = generate_key()
    error = _refusal(Authenticator(store, clock=clock), _request(key, other_private, clock))
    assert error.code == "bad_signature"


def test_a_replayed_request_is_refused_for_as_long_as_it_could_be_accepted(
    store: KeyStore, trader: tuple[ApiKey, str], clock: Clock
) -> None:
    key, private = trader
    auth = Authenticator(store, clock=clock)
    headers = _request(key, private, clock)
    auth.authenticate("POST", PATH, headers, BODY)
    for step_s in (0, 1, RECV_WINDOW_MS_DEFAULT / 1000 - 1):
        clock.advance(step_s)
        assert _refusal(auth, headers).code == "replayed"
    clock.advance(0.001 + 0.001)  # past the window: forgotten, and refused as stale instead
    assert _refusal(auth, headers).code == "stale_timestamp"


def test_a_request_signed_before_the_authenticator_started_is_refused(
    store: KeyStore, trader: tuple[ApiKey, str], clock: Clock
) -> None:
    """A restart empties the replay memory; so a restarted gateway accepts nothing signed
    before it started, and what the previous process accepted cannot come back."""
    key, private = trader
    before = Authenticator(store, clock=clock)
    headers = _request(key, private, clock)
    before.authenticate("POST", PATH, headers, BODY)
    clock.advance(0.001)
    restarted = Authenticator(store, clock=clock)
    error = _refusal(restarted, headers)
    assert (error.status, error.code) == (401, "signed_before_start")
    restarted.authenticate("POST", PATH, _request(key, private, clock), BODY)


def test_the_rate_limit_refuses_with_retry_after_and_recovers(
    store: KeyStore, trader: tuple[ApiKey, str], clock: Clock
) -> None:
    key, private = trader
    auth = Authenticator(store, rate_per_s=2, burst=3, clock=clock)
    for n in range(3):
        auth.authenticate("POST", PATH, _request(key, private, clock, body=b"%d" % n), b"%d" % n)
    error = _refusal(auth, _request(key, private, clock, body=b"x"), body=b"x")
    assert (error.status, error.code) == (429, "rate_limited")
    assert error.retry_after_s == pytest.approx(0.5)
    # Refused, but spent: the very same request is a replay now; sign again to retry.
    clock.advance(error.retry_after_s)
    assert _refusal(auth, _request(key, private, clock, timestamp_ms=clock.ms - 500, body=b"x"), body=b"x").code == (
        "replayed"
    )
    auth.authenticate("POST", PATH, _request(key, private, clock, body=b"x"), b"x")
    # Another key has its own budget.
    other, other_private = store.create(1002, "trader")
    auth.authenticate("POST", PATH, _request(other, other_private, clock), BODY)


def test_unauthenticated_requests_spend_no_budget_and_fill_no_memory(
    store: KeyStore, trader: tuple[ApiKey, str], clock: Clock
) -> None:
    key, private = trader
    auth = Authenticator(store, rate_per_s=1, burst=2, clock=clock, replay_cache_max=2)
    forger, _ = generate_key()
    for n in range(100):
        headers = _request(key, forger, clock, body=b"%d" % n)
        assert _refusal(auth, headers, body=b"%d" % n).code == "bad_signature"
        assert _refusal(auth, headers | {HEADER_KEY: "k" + "f" * 20}, body=b"%d" % n).code == "unknown_key"
    for n in range(2):
        auth.authenticate("POST", PATH, _request(key, private, clock, body=b"ok%d" % n), b"ok%d" % n)


def test_the_replay_memory_is_bounded_and_refuses_rather_than_forgets(
    store: KeyStore, trader: tuple[ApiKey, str], clock: Clock
) -> None:
    key, private = trader
    auth = Authenticator(store, rate_per_s=1000, burst=1000, clock=clock, replay_cache_max=3)
    first = _request(key, private, clock, body=b"0")
    auth.authenticate("POST", PATH, first, b"0")
    clock.advance(1)
    for n in (1, 2):
        auth.authenticate("POST", PATH, _request(key, private, clock, body=b"%d" % n), b"%d" % n)
    error = _refusal(auth, _request(key, private, clock, body=b"3"), body=b"3")
    assert (error.status, error.code) == (503, "replay_cache_full")
    # The oldest leaves the window 4 s (and a millisecond) from now.
    assert error.retry_after_s == pytest.approx(RECV_WINDOW_MS_DEFAULT / 1000 - 1 + 0.001)
    assert _refusal(auth, first, body=b"0").code == "replayed"  # still remembered
    clock.advance(error.retry_after_s)
    auth.authenticate("POST", PATH, _request(key, private, clock, body=b"3"), b"3")
    assert _refusal(auth, first, body=b"0").code == "stale_timestamp"


def test_a_clock_that_steps_back_forgets_nothing(store: KeyStore, trader: tuple[ApiKey, str], clock: Clock) -> None:
    key, private = trader
    auth = Authenticator(store, clock=clock)
    headers = _request(key, private, clock)
    auth.authenticate("POST", PATH, headers, BODY)
    clock.advance(RECV_WINDOW_MS_DEFAULT / 1000 + 1)
    auth.authenticate("POST", PATH, _request(key, private, clock, body=b"{}"), b"{}")  # prunes the first
    clock.advance(-(RECV_WINDOW_MS_DEFAULT / 1000 + 1))  # back to when the first was signed
    assert _refusal(auth, headers).code == "stale_timestamp"


def test_concurrent_callers_accept_each_request_exactly_once(
    store: KeyStore, trader: tuple[ApiKey, str], clock: Clock
) -> None:
    key, private = trader
    auth = Authenticator(store, rate_per_s=10_000, burst=10_000, clock=clock)
    requests = [(_request(key, private, clock, body=b"%d" % n), b"%d" % n) for n in range(50)]
    outcomes: list[str] = []
    lock = threading.Lock()

    def send() -> None:
        for headers, body in requests:
            try:
                auth.authenticate("POST", PATH, headers, body)
                outcome = "ok"
            except AuthError as error:
                outcome = error.code
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("ok") == len(requests)
    assert outcomes.count("replayed") == 7 * len(requests)


def test_an_authenticator_refuses_limits_it_cannot_keep(store: KeyStore) -> None:
    for bad in ({"recv_window_ms": 0}, {"recv_window_ms": 10**6}, {"rate_per_s": 0}, {"rate_per_s": float("nan")},
                {"burst": 0}, {"replay_cache_max": 0}, {"replay_cache_max": 10**9}, {"key_cache_s": 5}):
        with pytest.raises(ValueError, match=f"^{next(iter(bad))}:"):
            Authenticator(store, **bad)


def test_request_target_is_the_path_and_query_as_sent() -> None:
    assert request_target(b"/v1/orders", b"") == "/v1/orders"
    assert request_target(b"/v1/a%20b", b"x=1&y=%2F") == "/v1/a%20b?x=1&y=%2F"


# -- authorisation ----------------------------------------------------------------------

TRADER = Principal(key_id="k" + "1" * 20, user=1001, role="trader")
OPERATOR = Principal(key_id="k" + "2" * 20, user=OPERATOR_USER, role="operator")


def test_roles() -> None:
    require_operator(OPERATOR)
    require_user(TRADER, 1001)
    require_reader(TRADER, 1001)
    require_reader(OPERATOR, 1001)
    require_reader(OPERATOR, 0)
    for check, expected in (
        (lambda: require_operator(TRADER), "operator_only"),
        (lambda: require_user(TRADER, 1002), "not_your_account"),
        (lambda: require_user(OPERATOR, 1001), "trader_only"),
        (lambda: require_user(OPERATOR, 0), "trader_only"),
        (lambda: require_reader(TRADER, 1002), "not_your_account"),
        (lambda: require_reader(TRADER, 0), "not_your_account"),
    ):
        with pytest.raises(AuthError) as caught:
            check()
        assert (caught.value.status, caught.value.code) == (403, expected)


# -- the key store ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "role", "public", "label", "field"),
    [
        (0, "trader", None, "", "user"),
        (-1, "trader", None, "", "user"),
        (USER_ID_MAX + 1, "trader", None, "", "user"),
        (True, "trader", None, "", "user"),
        ("5", "trader", None, "", "user"),
        (5, "operator", None, "", "user"),
        (5, "admin", None, "", "role"),
        (5, "trader", "ab" * 31, "", "public_key"),
        (5, "trader", IDENTITY_KEY, "", "public_key"),
        (5, "trader", None, "x" * (LABEL_CHARS_MAX + 1), "label"),
        (5, "trader", None, "two\nlines", "label"),
        (5, "trader", None, "\x1b[31mred", "label"),
    ],
)
def test_a_bad_key_is_refused_naming_the_field(store: KeyStore, user: object, role: str, public: str | None,
                                               label: str, field: str) -> None:
    with pytest.raises(KeyStoreError, match=f"^{field}:"):
        if public is None:
            store.create(user, role, label)  # type: ignore[arg-type]
        else:
            store.add(user, role, public, label)  # type: ignore[arg-type]
    assert store.list() == []


def test_keys_are_stored_public_only_and_registered_once(tmp_path: Path, store: KeyStore, clock: Clock) -> None:
    key, private = store.create(7, "trader", "laptop")
    assert key.key_id.startswith("k") and len(key.key_id) == 21 and key.live
    assert key.public_key == public_key_of(private) and key.created_ms == clock.ms
    operator = store.add(OPERATOR_USER, "operator", generate_key()[1].upper())
    assert operator.public_key == operator.public_key.lower()
    assert store.list() == [key, operator] and store.get(key.key_id) == key and store.get("k" + "0" * 20) is None
    dump = b"".join(path.read_bytes() for path in tmp_path.iterdir() if path.is_file())
    assert private.encode() not in dump and bytes.fromhex(private) not in dump
    with pytest.raises(KeyStoreError, match="^public_key: already registered"):
        store.add(8, "trader", key.public_key)
    revoked = store.revoke(key.key_id)
    assert not revoked.live and store.get(key.key_id) == revoked
    with pytest.raises(KeyStoreError, match="^public_key: already registered"):
        store.add(7, "trader", key.public_key)  # a revoked key never comes back
    with pytest.raises(KeyStoreError, match="already revoked"):
        store.revoke(key.key_id)
    with pytest.raises(KeyStoreError, match="no key"):
        store.revoke("k" + "0" * 20)
    mode = sqlite3.connect(tmp_path / "gateway.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_opening_a_store_only_to_read_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="no such database"):
        KeyStore(tmp_path / "missing.db", create=False)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x INTEGER)").connection.commit()
    with pytest.raises(KeyStoreError, match="no api_keys table"):
        KeyStore(other, create=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["other.db"]


# -- ledger keys, end to end ------------------------------------------------------------


def _ledger(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    command = [sys.executable, "-m", "ledger.app.cli", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


def test_ledger_keys_end_to_end(tmp_path: Path) -> None:
    db = str(tmp_path / "gateway.db")
    created = _ledger("keys", "create", "--db", db, "--user", "42", "--label", "bot one", "--json")
    assert created.returncode == 0, created.stderr
    record = json.loads(created.stdout)
    private = record["private_key"]
    assert public_key_of(private) == record["public_key"] and record["user"] == 42
    assert "shown once" in created.stderr and private not in created.stderr
    text = _ledger("keys", "create", "--db", db, "--operator")
    assert text.returncode == 0 and "private key:" in text.stdout
    operator_private = text.stdout.split("private key:")[1].split()[0]
    client_private, client_public = generate_key()
    added = _ledger("keys", "add", "--db", db, "--user", "43", "--public-key", client_public, "--json")
    assert added.returncode == 0 and "private_key" not in json.loads(added.stdout)

    with KeyStore(db, create=False) as keys:
        auth = Authenticator(keys)
        headers = sign_headers(record["key_id"], private, "GET", "/v1/balances", b"")
        assert auth.authenticate("GET", "/v1/balances", headers, b"") == Principal(record["key_id"], 42, "trader")
        revoked = _ledger("keys", "revoke", "--db", db, record["key_id"])
        assert revoked.returncode == 0 and record["key_id"] in revoked.stdout
        later = sign_headers(record["key_id"], private, "GET", "/v1/balances?again=1", b"")
        auth.key_cache_s = 0
        with pytest.raises(AuthError, match="revoked"):
            auth.authenticate("GET", "/v1/balances?again=1", later, b"")

    for argv in (["keys", "list", "--db", db], ["keys", "list", "--db", db, "--json"]):
        listed = _ledger(*argv)
        assert listed.returncode == 0, listed.stderr
        for secret in (private, operator_private, client_private):
            assert secret not in listed.stdout and secret not in listed.stderr
    rows = json.loads(_ledger("keys", "list", "--db", db, "--json").stdout)
    assert [(row["user"], row["role"], row["revoked_ms"] is None) for row in rows] == [
        (42, "trader", False), (0, "operator", True), (43, "trader", True)
    ]
    again = _ledger("keys", "revoke", "--db", db, record["key_id"])
    assert again.returncode == 2 and len(again.stderr.splitlines()) == 1 and "already revoked" in again.stderr


def test_ledger_keys_without_cryptography_says_what_to_install(tmp_path: Path) -> None:
    program = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'cryptography':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from ledger.app.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    db = str(tmp_path / "gateway.db")
    done = subprocess.run([sys.executable, "-c", program, "keys", "create", "--db", db, "--user", "1"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "ledger keys create: API keys need the cryptography package: "
        "install the gateway extra: pip install -e '.[gateway]'"
    ]
    assert not (tmp_path / "gateway.db").exists()
