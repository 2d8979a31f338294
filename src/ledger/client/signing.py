"""Ed25519 request signatures for the HTTP gateway: what a client signs and how a server
checks it. Used by both sides; depends only on ``cryptography`` and the standard library.

A request carries three headers:

* ``X-Ledger-Key``: the key id the gateway issued (``k`` and 20 lower-case hex digits).
* ``X-Ledger-Timestamp``: when the request was signed, in milliseconds since the Unix
  epoch, as a decimal integer without sign, spaces or leading zeros.
* ``X-Ledger-Signature``: the Ed25519 signature of :func:`signed_message`, as 128
  lower-case hex digits (64 bytes). Hex rather than base64 because keys are hex too and
  every language prints hex the same way (no alphabet or padding variants to agree on).

The signed message is these bytes (``\\n`` is the single byte 0x0A)::

    ledger-request-v1 \\n TIMESTAMP \\n METHOD \\n TARGET \\n BODY

without the spaces drawn here: the ASCII text ``ledger-request-v1``, the timestamp exactly
as in its header, the method in upper case (``GET``, ``POST``), the request target (the
path and, when there is one, ``?`` and the query string, byte for byte as sent on the
wire, percent-encoding included), then the body bytes as sent (empty for a request
without one). Each of the first four parts is printable ASCII without a newline, so the
newlines cannot be confused with content, and the body, last, may hold any bytes. The
first line names the scheme, so a signature made for it is never valid for anything else
the same key might sign.

>>> private, public = generate_key()
>>> message = signed_message(1_700_000_000_000, "post", "/v1/orders?dry=1", b'{"qty":1}')
>>> message
b'ledger-request-v1\\n1700000000000\\nPOST\\n/v1/orders?dry=1\\n{"qty":1}'
>>> headers = sign(private, 1_700_000_000_000, "POST", "/v1/orders?dry=1", b'{"qty":1}')
>>> verify(public, headers[HEADER_SIGNATURE], message)
True
>>> verify(public, headers[HEADER_SIGNATURE], message + b" ")
False
"""

from __future__ import annotations

import re
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

HEADER_KEY = "X-Ledger-Key"
HEADER_TIMESTAMP = "X-Ledger-Timestamp"
HEADER_SIGNATURE = "X-Ledger-Signature"

# The first line of every signed message: a signature over it is valid for this scheme only.
SCHEME = b"ledger-request-v1"
# Ed25519 sizes: a 32-byte private seed and public key, a 64-byte signature.
KEY_BYTES = 32
SIGNATURE_BYTES = 64
# A timestamp fits a signed 64-bit integer, like every other integer the ledger stores.
TIMESTAMP_MS_MAX = 2**63 - 1
# Methods are short tokens (GET, POST, DELETE); a long one is nobody's request.
METHOD_CHARS_MAX = 16
# A request target longer than this is refused by common servers and proxies anyway.
TARGET_CHARS_MAX = 8192
KEY_ID_HEX_DIGITS = 20

_TIMESTAMP = re.compile(r"\A(?:0|[1-9][0-9]{0,18})\Z")
_SIGNATURE = re.compile(rf"\A[0-9a-f]{{{2 * SIGNATURE_BYTES}}}\Z")
_KEY_ID = re.compile(rf"\Ak[0-9a-f]{{{KEY_ID_HEX_DIGITS}}}\Z")
_METHOD = re.compile(rf"\A[A-Za-z]{{1,{METHOD_CHARS_MAX}}}\Z")
# Printable ASCII without space: what a request target may hold unencoded.
_TARGET = re.compile(rf"\A/[\x21-\x7e]{{0,{TARGET_CHARS_MAX - 1}}}\Z")


def signed_message(timestamp_ms: int, method: str, path: str, body: bytes) -> bytes:
    """The bytes a request's signature covers (see the module docstring).

    ``path`` is the request target as sent: the path, and ``?`` and the query string if
    there is a query. A bad part raises ValueError naming it; nothing is normalised except
    the method's case.
    """
    if isinstance(timestamp_ms, bool) or not isinstance(timestamp_ms, int):
        raise ValueError(f"timestamp: must be an integer number of milliseconds, got {type(timestamp_ms).__name__}")
    if not 0 <= timestamp_ms <= TIMESTAMP_MS_MAX:
        raise ValueError(f"timestamp: {timestamp_ms} is outside 0..{TIMESTAMP_MS_MAX}")
    if not isinstance(method, str) or not _METHOD.match(method):
        raise ValueError(f"method: must be 1 to {METHOD_CHARS_MAX} ASCII letters, got {method!r:.40}")
    if not isinstance(path, str) or not _TARGET.match(path):
        raise ValueError(
            f"path: must start with / and hold at most {TARGET_CHARS_MAX} printable ASCII characters "
            f"without spaces (percent-encode the rest), got {path!r:.80}"
        )
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise ValueError(f"body: must be bytes, got {type(body).__name__}")
    head = b"\n".join((SCHEME, str(timestamp_ms).encode(), method.upper().encode(), path.encode()))
    return head + b"\n" + bytes(body)


def parse_timestamp(text: str) -> int:
    """The milliseconds of a ``X-Ledger-Timestamp`` header; ValueError unless it is the
    canonical decimal form (the form the signature was made over)."""
    if not _TIMESTAMP.match(text):
        raise ValueError(
            f"timestamp: {text!r:.40} is not a decimal number of milliseconds without sign or leading zeros"
        )
    value = int(text)
    if value > TIMESTAMP_MS_MAX:
        raise ValueError(f"timestamp: {text} is above {TIMESTAMP_MS_MAX}")
    return value


def is_signature(text: str) -> bool:
    """Whether ``text`` has the form of a signature header (128 lower-case hex digits)."""
    return bool(_SIGNATURE.match(text))


def is_key_id(text: str) -> bool:
    """Whether ``text`` has the form of a key id (``k`` and 20 lower-case hex digits)."""
    return bool(_KEY_ID.match(text))


def _key_bytes(text: str, what: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{what}: must be a hex string, got {type(text).__name__}")
    if len(text) != 2 * KEY_BYTES:
        raise ValueError(f"{what}: must be {2 * KEY_BYTES} hex digits ({KEY_BYTES} bytes), got {len(text)} characters")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{what}: is not hexadecimal (0-9, a-f)") from None


def _private_key(private_hex: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(_key_bytes(private_hex, "private key"))


def _public_hex(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


# Curve25519 in twisted Edwards form: -x^2 + y^2 = 1 + d x^2 y^2 over the field of P.
_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P
_SQRT_MINUS_1 = pow(2, (_P - 1) // 4, _P)


def _point(raw: bytes) -> tuple[int, int] | None:
    """The curve point ``raw`` encodes (RFC 8032, 5.1.3), or None if it encodes none."""
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    x_odd = raw[31] >> 7
    if y >= _P:
        return None  # a non-canonical encoding
    x2 = (y * y - 1) * pow(_D * y * y + 1, -1, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_MINUS_1 % _P
    if (x * x - x2) % _P or (x == 0 and x_odd):
        return None
    return (_P - x if x & 1 != x_odd else x), y


def _double(point: tuple[int, int]) -> tuple[int, int]:
    x, y = point
    t = _D * x * x * y * y % _P
    return (2 * x * y * pow(1 + t, -1, _P) % _P, (y * y + x * x) * pow(1 - t, -1, _P) % _P)


def _is_strong(raw: bytes) -> bool:
    """Whether ``raw`` is a canonical encoding of a point of large order. A small-order
    key (the identity, say) verifies signatures anyone can make without a private key,
    and OpenSSL does not refuse one, so such a key must never be registered."""
    point = _point(raw)
    if point is None:
        return False
    for _ in range(3):  # the cofactor is 8: [8]P is the identity exactly when P has small order
        point = _double(point)
    return point != (0, 1)


def check_public_key(public_hex: str) -> str:
    """``public_hex`` in canonical form (lower case) if it is a usable Ed25519 public key:
    64 hex digits encoding a point of the curve outside its small-order subgroup.
    Otherwise ValueError saying what is wrong."""
    raw = _key_bytes(public_hex, "public key")
    if not _is_strong(raw):
        raise ValueError("public key: not a usable Ed25519 public key (not a curve point, or one of small order)")
    return raw.hex()


def public_key_from_hex(public_hex: str) -> Ed25519PublicKey:
    """The public key ``public_hex`` holds, checked by :func:`check_public_key`."""
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(check_public_key(public_hex)))


def generate_key() -> tuple[str, str]:
    """A new key pair: (private seed, public key), each 64 lower-case hex digits."""
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return seed.hex(), _public_hex(key)


def public_key_of(private_hex: str) -> str:
    """The public key (64 lower-case hex digits) of the private seed ``private_hex``."""
    return _public_hex(_private_key(private_hex))


def sign(private_hex: str, timestamp_ms: int, method: str, path: str, body: bytes) -> dict[str, str]:
    """The timestamp and signature headers of a request signed at ``timestamp_ms``."""
    signature = _private_key(private_hex).sign(signed_message(timestamp_ms, method, path, body))
    return {HEADER_TIMESTAMP: str(timestamp_ms), HEADER_SIGNATURE: signature.hex()}


def sign_headers(
    key_id: str, private_hex: str, method: str, path: str, body: bytes, timestamp_ms: int | None = None
) -> dict[str, str]:
    """All three authentication headers of a request, signed now unless ``timestamp_ms``
    is given."""
    if not isinstance(key_id, str) or not is_key_id(key_id):
        raise ValueError(f"key id: must be k and {KEY_ID_HEX_DIGITS} lower-case hex digits, got {key_id!r:.40}")
    when = time.time_ns() // 1_000_000 if timestamp_ms is None else timestamp_ms
    return {HEADER_KEY: key_id, **sign(private_hex, when, method, path, body)}


def verify(public_hex: str, signature: str, message: bytes) -> bool:
    """Whether ``signature`` (128 lower-case hex digits) is ``public_hex``'s signature of
    ``message``. A signature of the wrong form is False; a bad public key raises ValueError."""
    key = public_key_from_hex(public_hex)
    if not isinstance(signature, str) or not is_signature(signature):
        return False
    try:
        key.verify(bytes.fromhex(signature), message)
    except InvalidSignature:
        return False
    return True
