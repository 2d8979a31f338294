"""The state's canonical form: its hash, self-verifying snapshots, and comparison views.

The canonical form is plain data in a fixed order (sorted where the state holds a dict),
so equal states hash alike in any process, under any PYTHONHASHSEED.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from ledger.protocol.commands import OrderType, Side
from ledger.protocol.events import SCHEMA_VERSION
from ledger.protocol.market import Asset, Symbol
from ledger.ubscore.state import (
    O_PENDING,
    O_REQUEST_KEY,
    O_SLOTS,
    O_USER,
    SnapshotError,
    State,
    SymbolInfo,
    outcome,
)

SNAPSHOT_FORMAT = "ubscore-snapshot"
# The oldest snapshot schema restore reads. Snapshots before 3 hold no placing request
# per open order, so the orders' client ids (order_ids_by_request) cannot be rebuilt
# from them; before 4 no total, settled fill, time in force or pending amends per open
# order, which amends need (an order's total cannot be rebuilt from its lock). Such a
# snapshot is refused, and the state rebuilt from the log instead.
SNAPSHOT_SCHEMA_MIN = 4


class _Snapshot(msgspec.Struct, frozen=True):
    format: str
    schema: int
    seq: int
    hash: str
    state: dict[str, Any]


def canonical(state: State) -> dict[str, Any]:
    """The state as plain sorted data: the input of the hash and of snapshots."""
    return {
        "seq": state.seq,
        "shard": state.shard,
        "request_window": state.request_window,
        "assets": [[a.code, a.decimals] for a in state.assets],
        "symbols": [
            [s.name, s.base, s.quote, s.lot, s.tick, s.maker_fee_ppm, s.taker_fee_ppm]
            for s in (state.symbols[name].symbol for name in sorted(state.symbols))
        ],
        "accounts": [[user, account] for user, account in sorted(state.accounts.items())],
        "orders": [[order_id, *order] for order_id, order in sorted(state.orders.items())],
        "order_ids_by_request": sorted(state.order_ids_by_request.items()),
        "requests": [[key, *outcome(state.requests[key])] for key in state.request_order],
        "deposited": state.deposited,
        "withdrawn": state.withdrawn,
        "last_input_offset": state.last_input_offset,
        "last_engine_seq": sorted(state.last_engine_seq.items()),
    }


def _digest(body: dict[str, Any]) -> str:
    return hashlib.blake2b(msgspec.json.encode(body), digest_size=32).hexdigest()


def state_hash(state: State) -> str:
    """blake2b-256 of the canonical encoding: equal states have equal hashes in any
    process, under any PYTHONHASHSEED."""
    return _digest(canonical(state))


def snapshot(state: State) -> bytes:
    """A self-verifying snapshot: seq, hash and schema version with the state."""
    body = canonical(state)
    return msgspec.json.encode(_Snapshot(SNAPSHOT_FORMAT, SCHEMA_VERSION, state.seq, _digest(body), body))


def restore(data: bytes) -> State:
    """Rebuild a state from ``snapshot()`` bytes, verifying format, schema and hash."""
    try:
        snap = msgspec.json.decode(data, type=_Snapshot)
    except msgspec.MsgspecError as error:
        raise SnapshotError(f"not a UBSCore snapshot: {error}") from None
    if snap.format != SNAPSHOT_FORMAT:
        raise SnapshotError(f"snapshot format {snap.format!r} is not {SNAPSHOT_FORMAT!r}")
    if snap.schema > SCHEMA_VERSION:
        raise SnapshotError(f"snapshot schema {snap.schema} is newer than this library's {SCHEMA_VERSION}")
    if snap.schema < SNAPSHOT_SCHEMA_MIN:
        raise SnapshotError(
            f"snapshot schema {snap.schema} is older than {SNAPSHOT_SCHEMA_MIN} (its open orders lack their placing "
            "request, total or pending amends); rebuild the state from the log instead"
        )
    body = snap.state
    try:
        state = State(body["shard"], body["request_window"])
        state.seq = body["seq"]
        for code, decimals in body["assets"]:
            state.asset_index[code] = len(state.assets)
            state.assets.append(Asset(code, decimals))
        state.width = 2 * len(state.assets)
        for name, base, quote, lot, tick, maker, taker in body["symbols"]:
            symbol = Symbol(name, base, quote, lot, tick, maker, taker)
            state.symbols[name] = SymbolInfo(symbol, state.asset_index[base], state.asset_index[quote])
        state.accounts = {user: account for user, account in body["accounts"]}
        if any(len(account) != state.width for account in state.accounts.values()):
            raise ValueError(f"an account is not {state.width} balances wide")
        state.orders = {row[0]: [row[1], row[2], Side(row[3]), OrderType(row[4]), *row[5:]] for row in body["orders"]}
        for order in state.orders.values():
            if len(order) == O_SLOTS:
                order[O_PENDING] = tuple((price, qty) for price, qty in order[O_PENDING])
        state.order_ids_by_request = {key: order_id for key, order_id in body["order_ids_by_request"]}
        _check_order_ids_by_request(state)
        for key, fingerprint, seq, reason in body["requests"]:
            state.requests[key] = (tuple(fingerprint), seq, reason)
            state.request_order.append(key)
        state.deposited = body["deposited"]
        state.withdrawn = body["withdrawn"]
        state.last_input_offset = body["last_input_offset"]
        state.last_engine_seq = {symbol: seq for symbol, seq in body["last_engine_seq"]}
    except (KeyError, TypeError, ValueError) as error:
        raise SnapshotError(f"snapshot at seq {snap.seq} is malformed: {error!r}") from None
    if state.seq != snap.seq or state_hash(state) != snap.hash:
        raise SnapshotError(f"snapshot at seq {snap.seq}: state does not match its recorded hash")
    return state


def _check_order_ids_by_request(state: State) -> None:
    """Every open order is named by its placing request, and nothing else is named."""
    if any(len(order) != O_SLOTS for order in state.orders.values()):
        raise ValueError(f"an order is not {O_SLOTS} slots long")
    if any(order[O_REQUEST_KEY] >> 64 != order[O_USER] for order in state.orders.values()):
        raise ValueError("an order's placing request is another user's")
    named = {order[O_REQUEST_KEY]: order_id for order_id, order in state.orders.items()}
    if named != state.order_ids_by_request:
        raise ValueError("order_ids_by_request does not name exactly the open orders")


def without_sequence(state: State, keep_requests: bool = True) -> dict[str, Any]:
    """The canonical state without the fields every event moves (seq, input position),
    and optionally without the request window: what a rejection must leave unchanged."""
    view = canonical(state)
    del view["seq"], view["last_input_offset"]
    if not keep_requests:
        del view["requests"]
    return view
