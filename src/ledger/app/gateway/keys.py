"""The gateway's API keys: who may sign requests, as what, since when, until when.

The table ``api_keys`` lives in the gateway's SQLite database (beside the gateway's own
tables) and holds public keys only: a copy of it lets nobody sign anything. The database
runs in WAL mode with a busy timeout, so ``ledger keys`` can add and revoke keys while a
gateway reads them from another process.

Rules a key obeys:

* ``role`` is ``trader`` or ``operator``. A trader key carries the user it acts for, an
  integer in 1..USER_ID_MAX. An operator key carries user 0 (``OPERATOR_USER``): it acts
  for the exchange, not for an account of its own, and no trader key can ever carry 0,
  which is the fee account.
* A public key is registered once, ever: a second registration of the same key is
  refused, even after the first was revoked. So a key id names exactly one key, a signature
  made for one key id is never valid under another, and a revoked (perhaps leaked) key
  cannot come back.
* A revoked key stays in the table, with the time it was revoked, and is never live again.

Nothing here logs or prints a secret; :meth:`KeyStore.create` returns the one private key
it generates and stores only its public half.
"""

from __future__ import annotations

import builtins
import contextlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import msgspec

from ledger.client.signing import KEY_ID_HEX_DIGITS, check_public_key, generate_key, public_key_of
from ledger.protocol.limits import USER_ID_MAX

Role = Literal["trader", "operator"]
ROLES: tuple[Role, ...] = ("trader", "operator")
OPERATOR_USER = 0
# A label names the key for its owner ("laptop", "market maker 2"); it is shown in
# listings, so it is short and holds no control characters (no terminal escapes).
LABEL_CHARS_MAX = 200
# A writer (the CLI) and the gateway share the file; a lock is held for microseconds, so
# waiting this long for one means something is wrong.
BUSY_TIMEOUT_MS = 5_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id     TEXT PRIMARY KEY,
    user       INTEGER NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('trader', 'operator')),
    public_key TEXT NOT NULL UNIQUE,
    label      TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
)
"""
_TABLE_EXISTS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'api_keys'"
_COLUMNS = "key_id, user, role, public_key, label, created_ms, revoked_ms"


class KeyStoreError(ValueError):
    """A key that cannot be added or revoked; the message names the field or key id."""


class ApiKey(msgspec.Struct, frozen=True):
    """One registered key. ``revoked_ms`` is None while the key is live."""

    key_id: str
    user: int
    role: Role
    public_key: str
    label: str
    created_ms: int
    revoked_ms: int | None = None

    @property
    def live(self) -> bool:
        return self.revoked_ms is None


def check_new_key(user: int, role: str, label: str = "", public_hex: str | None = None) -> str | None:
    """Refuse a key that :meth:`KeyStore.add` would refuse, before anything is opened.
    Returns ``public_hex`` in canonical form (None if not given)."""
    if role not in ROLES:
        raise KeyStoreError(f"role: must be one of {', '.join(ROLES)}, got {role!r:.40}")
    if isinstance(user, bool) or not isinstance(user, int):
        raise KeyStoreError(f"user: must be an integer, got {type(user).__name__}")
    if role == "trader" and not 1 <= user <= USER_ID_MAX:
        raise KeyStoreError(f"user: a trader key's user must be 1..{USER_ID_MAX}, got {user}")
    if role == "operator" and user != OPERATOR_USER:
        raise KeyStoreError(
            f"user: an operator key carries user {OPERATOR_USER} (it acts for no account of its own), got {user}"
        )
    if not isinstance(label, str):
        raise KeyStoreError(f"label: must be text, got {type(label).__name__}")
    if len(label) > LABEL_CHARS_MAX:
        raise KeyStoreError(f"label: at most {LABEL_CHARS_MAX} characters, got {len(label)}")
    if not label.isprintable():
        raise KeyStoreError("label: must hold no control characters (newlines, tabs, escapes)")
    if public_hex is None:
        return None
    try:
        return check_public_key(public_hex)
    except ValueError as error:
        raise KeyStoreError("public_key: " + str(error).removeprefix("public key: ")) from None


def _row_key(row: tuple[object, ...]) -> ApiKey:
    return msgspec.convert(dict(zip(_COLUMNS.split(", "), row, strict=True)), ApiKey)


class KeyStore:
    """The ``api_keys`` table of the SQLite database at ``path``.

    ``create=False`` opens an existing database that already holds the table, and
    creates or changes nothing to do so (for commands that only read or revoke). Safe to
    share between threads; safe beside other processes using the same file.
    """

    def __init__(self, path: str | Path, create: bool = True, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        if not create and not self.path.is_file():
            raise KeyStoreError(f"{self.path}: no such database")
        # Autocommit; writes take the write lock up front (BEGIN IMMEDIATE) so a check and
        # the write it guards see the same table.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if create:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute(_SCHEMA)
            elif not self._db.execute(_TABLE_EXISTS).fetchone():
                raise KeyStoreError(f"{self.path}: holds no api_keys table (no key was ever added here)")
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def add(self, user: int, role: Role, public_hex: str, label: str = "") -> ApiKey:
        """Register ``public_hex`` for ``user`` in ``role``, under a new random key id."""
        public = check_new_key(user, role, label, public_hex)
        assert public is not None
        key = ApiKey(
            key_id="k" + secrets.token_hex(KEY_ID_HEX_DIGITS // 2),
            user=user,
            role=role,
            public_key=public,
            label=label,
            created_ms=self._now_ms(),
        )
        with self._lock, self._transaction():
            holder = self._db.execute("SELECT key_id FROM api_keys WHERE public_key = ?", (public,)).fetchone()
            if holder is not None:
                raise KeyStoreError(
                    f"public_key: already registered (as {holder[0]}); a key is registered once, even after "
                    "it is revoked: generate a new one"
                )
            self._db.execute(
                f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key.key_id, key.user, key.role, key.public_key, key.label, key.created_ms, None),
            )
        return key

    def create(self, user: int, role: Role, label: str = "") -> tuple[ApiKey, str]:
        """Generate a key pair and register its public half; the private seed is
        returned, once, and stored nowhere."""
        check_new_key(user, role, label)
        private, public = generate_key()
        assert public_key_of(private) == public
        return self.add(user, role, public, label), private

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke ``key_id`` now; KeyStoreError if no such key or it is already revoked."""
        with self._lock, self._transaction():
            key = self._get(key_id)
            if key is None:
                raise KeyStoreError(f"key_id: no key {key_id!r:.40}")
            if key.revoked_ms is not None:
                raise KeyStoreError(f"key_id: {key_id} was already revoked (at {key.revoked_ms} ms)")
            revoked = msgspec.structs.replace(key, revoked_ms=self._now_ms())
            self._db.execute("UPDATE api_keys SET revoked_ms = ? WHERE key_id = ?", (revoked.revoked_ms, key_id))
        return revoked

    def get(self, key_id: str) -> ApiKey | None:
        """The key ``key_id``, live or revoked, as the file holds it now; None if unknown."""
        with self._lock:
            return self._get(key_id)

    def list(self) -> builtins.list[ApiKey]:
        """Every key, live and revoked, in the order they were registered."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY rowid").fetchall()
        return [_row_key(row) for row in rows]

    def _get(self, key_id: str) -> ApiKey | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        return None if row is None else _row_key(row)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """A write transaction holding the file's write lock from its start; rolled back if
        the body raises."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
