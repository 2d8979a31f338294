"""UBSCore's events (the balance.events stream): immutable, sequenced facts.

Every event carries its stream's ``seq`` (1, 2, 3, ... with no holes), the balances after
the change, and the input it came from: ``input_offset`` (the command's offset in
balance.operations) or ``symbol`` + ``engine_seq`` (the engine output it settles). A
restarted UBSCore rebuilds its state from these events alone and resumes its inputs
just after the positions they name.

Schema evolution: fields are only ever appended, each new one with a default, so a record
written before the field existed still decodes (see ``SCHEMA_VERSION``).
"""

from __future__ import annotations

from typing import Annotated, Union

import msgspec

from ledger.protocol.commands import Command, Int64, OrderType, SelfTrade, Side, TimeInForce
from ledger.protocol.limits import INT64_MAX
from ledger.protocol.market import Asset, Symbol

# Bumped whenever a field is appended to any record type or the wire form changes.
# Readers accept every version up to their own; records carry no per-record version
# because trailing defaults make older records decode unchanged, and each record's form
# is told by its first byte. 3: a record holding an integer beyond 64 bits is written
# whole in the codec's wide form; cancels may name an order by its placing request
# (CancelOrder.order_request_id, CancelRequested.order_request_id and by_request).
# 4: amends: the commands ReduceOrder and ReplaceOrder, the events AmendRequested and
# AmendSettled, the engine outputs OrderAmended and AmendRejected (new types, appended
# to their unions; no field of an older type changed). Snapshots of UBSCore gain each
# open order's total, settled fill, time in force and pending amends.
SCHEMA_VERSION = 4

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(gt=0)]
# Quantities in lots and prices in ticks are not amounts: within 64 bits, like every id.
Positive64 = Annotated[int, msgspec.Meta(gt=0, le=INT64_MAX)]
NonNegative64 = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]


class _Event(msgspec.Struct, frozen=True, array_like=True, tag=True, gc=False):
    pass


class AssetListed(_Event, frozen=True):
    """An asset became known; its index is the order of listing."""

    seq: Int64
    input_offset: Int64
    request_id: Int64
    asset: Asset


class SymbolListed(_Event, frozen=True):
    """A symbol opened for trading."""

    seq: Int64
    input_offset: Int64
    request_id: Int64
    symbol: Symbol


class Deposited(_Event, frozen=True):
    """``amount`` credited to available; ``available`` and ``locked`` are the user's
    balances of ``asset`` after it."""

    seq: Int64
    input_offset: Int64
    user: Int64
    request_id: Int64
    asset: str
    amount: Positive
    available: NonNegative
    locked: NonNegative
    ts_ms: Int64 = 0


class Withdrawn(_Event, frozen=True):
    """``amount`` debited from available; ``available`` and ``locked`` are the user's
    balances of ``asset`` after it."""

    seq: Int64
    input_offset: Int64
    user: Int64
    request_id: Int64
    asset: str
    amount: Positive
    available: NonNegative
    locked: NonNegative
    ts_ms: Int64 = 0


class OrderAccepted(_Event, frozen=True):
    """Funds are locked and the order goes to the matching engine.

    ``lock_amount`` of ``lock_asset`` moved from available to locked; ``available`` and
    ``locked`` are that asset's balances after the move.
    """

    seq: Int64
    input_offset: Int64
    user: Int64
    request_id: Int64
    order_id: Int64
    symbol: str
    side: Side
    order_type: OrderType
    tif: TimeInForce
    stp: SelfTrade
    qty: Positive64
    price: NonNegative64
    quote_budget: NonNegative
    lock_asset: str
    lock_amount: Positive
    available: NonNegative
    locked: NonNegative
    ts_ms: Int64 = 0


class CancelRequested(_Event, frozen=True):
    """The user asked to cancel; the engine decides (the order may already be filled).

    ``order_id`` is always the order's id, resolved by UBSCore when the command named
    the order by its placing request: then ``by_request`` is true and
    ``order_request_id`` is that request's id (both as the command had them otherwise:
    false and 0), so a replay re-resolves the same order and a retry is recognized.
    """

    seq: Int64
    input_offset: Int64
    user: Int64
    request_id: Int64
    order_id: Int64
    symbol: str
    ts_ms: Int64 = 0
    order_request_id: Int64 = 0
    by_request: bool = False


class AmendRequested(_Event, frozen=True):
    """UBSCore accepted a ``ReduceOrder`` (``keep_priority`` true) or a ``ReplaceOrder``
    and passes it to the engine, which decides (fills may be in flight).

    ``qty`` is the order's new total and ``qty_before`` its total before this amend, as
    UBSCore last accepted them: the engine takes ``qty_before - qty`` off what rests (it
    adds for a larger total), and ends the order if nothing would be left. ``price`` is
    the order's price after the amend (a reduce keeps the one it will have). ``stp``
    applies if a replace crosses; ``post_only`` says the engine must refuse a replace
    that would cross. ``lock_amount`` (possibly 0) of ``lock_asset`` moved from available
    to locked for it; ``available`` and ``locked`` are that asset's balances after.
    ``order_request_id`` and ``by_request`` are as in ``CancelRequested``; ``qty_kept``
    says the replace left its quantity 0 (keep the total), so a retry is recognized.
    """

    seq: Int64
    input_offset: Int64
    user: Int64
    request_id: Int64
    order_id: Int64
    symbol: str
    side: Side
    keep_priority: bool
    price: Positive64
    qty: Positive64
    qty_before: Positive64
    stp: SelfTrade
    post_only: bool
    lock_asset: str
    lock_amount: NonNegative
    available: NonNegative
    locked: NonNegative
    ts_ms: Int64 = 0
    order_request_id: Int64 = 0
    by_request: bool = False
    qty_kept: bool = False


class AmendSettled(_Event, frozen=True):
    """The engine answered an amend and the order stays open: it applied it (``reason``
    0; ``price``, ``qty`` and ``qty_remaining`` are the order's new state, before any
    trade the amend makes), or refused it (``POST_ONLY_WOULD_TAKE``; the state is the
    order's unchanged one). ``amount`` (possibly 0) of ``asset`` the order no longer needs
    locked returned to available; ``available`` and ``locked`` are the balances after."""

    seq: Int64
    symbol: str
    engine_seq: Int64
    user: Int64
    order_id: Int64
    reason: Int64
    price: Positive64
    qty: Positive64
    qty_remaining: NonNegative64
    asset: str
    amount: NonNegative
    available: NonNegative
    locked: NonNegative


class Rejected(_Event, frozen=True):
    """A command refused, with the command itself for the audit trail.

    For a retried request (``DUPLICATE_REQUEST``) ``original_seq`` and ``original_reason``
    give the outcome of the first attempt (reason 0 means it was accepted). A record that
    is not a command of the schema (``MALFORMED_COMMAND``) is not quoted: ``command`` is
    None and ``record_bytes`` and ``record_digest`` (blake2b-128 of the record, hex) name
    what was refused.
    """

    seq: Int64
    input_offset: Int64
    reason: Int64
    command: Command | None
    original_seq: Int64 = 0
    original_reason: Int64 = 0
    record_bytes: Int64 = 0
    record_digest: str = ""


class TradeSettled(_Event, frozen=True):
    """A trade from the engine, settled for both users.

    The buyer spends ``quote_amount`` of locked quote and receives ``base_amount`` minus
    its fee; the seller spends ``base_amount`` of locked base and receives
    ``quote_amount`` minus its fee. ``taker_refund`` is the quote a buying limit taker had
    locked above the trade price, returned to available at once. Balances are after the
    trade; the fee account's are its available balances of base and quote.
    """

    seq: Int64
    symbol: str
    engine_seq: Int64
    trade_id: Int64
    price: Positive64
    qty: Positive64
    maker_side: Side
    base_amount: Positive
    quote_amount: Positive
    maker_user: Int64
    maker_order_id: Int64
    maker_fee: NonNegative
    taker_user: Int64
    taker_order_id: Int64
    taker_fee: NonNegative
    taker_refund: NonNegative
    maker_base_available: NonNegative
    maker_base_locked: NonNegative
    maker_quote_available: NonNegative
    maker_quote_locked: NonNegative
    taker_base_available: NonNegative
    taker_base_locked: NonNegative
    taker_quote_available: NonNegative
    taker_quote_locked: NonNegative
    fee_base_available: NonNegative
    fee_quote_available: NonNegative
    maker_done: bool
    taker_done: bool


class FundsUnlocked(_Event, frozen=True):
    """An order ended; what it still had locked returns to available.

    ``amount`` may be 0 (the order ended with nothing left locked); the event still
    closes the order. ``reason`` is the engine output's tag code (see ``UNLOCK_*``).
    """

    seq: Int64
    symbol: str
    engine_seq: Int64
    user: Int64
    order_id: Int64
    asset: str
    amount: NonNegative
    available: NonNegative
    locked: NonNegative
    reason: Int64


# Why an order's funds were unlocked.
UNLOCK_FILLED = 0
UNLOCK_CANCELLED = 1
UNLOCK_EXPIRED = 2
UNLOCK_REJECTED = 3

BalanceEvent = Union[
    AssetListed,
    SymbolListed,
    Deposited,
    Withdrawn,
    OrderAccepted,
    CancelRequested,
    Rejected,
    TradeSettled,
    FundsUnlocked,
    AmendRequested,
    AmendSettled,
]
BALANCE_EVENT_TYPES: tuple[type, ...] = (
    AssetListed,
    SymbolListed,
    Deposited,
    Withdrawn,
    OrderAccepted,
    CancelRequested,
    Rejected,
    TradeSettled,
    FundsUnlocked,
    AmendRequested,
    AmendSettled,
)
