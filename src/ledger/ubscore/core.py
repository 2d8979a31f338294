"""UBSCore: the user balance service core, the single writer of balances.

``decide(state, input)`` validates a command (or settles an engine output) against the
state and returns the events it produces, without changing the state. ``evolve(state,
event)`` applies one event. Both are deterministic: no clock, no randomness, no iteration
over anything whose order could differ between processes. The live path is
decide-then-evolve; replay is evolve alone, and it re-checks every event against the
state (the balances an event says it produced must be the ones its amounts produce), so a
replay is also an audit.

Every command gets exactly one event: an acceptance or ``Rejected``. A rejected command
changes nothing but ``seq`` (and the request window, so a retry gets the same answer).

State layout (chosen for memory: about 300 bytes a user with three assets):
``accounts[user]`` is a flat list ``[available_0, locked_0, available_1, locked_1, ...]``
indexed by the asset's listing order; ``orders[order_id]`` is the lock an open order
still holds.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from ledger.protocol.commands import (
    CancelOrder,
    Command,
    Deposit,
    ListAsset,
    ListSymbol,
    OrderType,
    PlaceOrder,
    SelfTrade,
    Side,
    TimeInForce,
    Withdraw,
)
from ledger.protocol.events import (
    SCHEMA_VERSION,
    UNLOCK_CANCELLED,
    UNLOCK_EXPIRED,
    UNLOCK_FILLED,
    UNLOCK_REJECTED,
    AssetListed,
    BalanceEvent,
    CancelRequested,
    Deposited,
    FundsUnlocked,
    OrderAccepted,
    Rejected,
    SymbolListed,
    TradeSettled,
    Withdrawn,
)
from ledger.protocol.limits import (
    AMOUNT_MAX,
    FEE_ACCOUNT_USER,
    ORDER_ID_SHARD_SHIFT,
    ORDER_PRICE_TICKS_MAX,
    ORDER_QTY_LOTS_MAX,
    PPM,
    REQUEST_ID_MAX,
    REQUEST_WINDOW_DEFAULT,
    SHARDS_MAX,
    USER_ID_MAX,
)
from ledger.protocol.market import Asset, Symbol
from ledger.protocol.outputs import (
    EngineOutput,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderRested,
    Trade,
)
from ledger.protocol.reasons import Reason

Input = Command | EngineOutput

_BUY = Side.BUY
_LIMIT = OrderType.LIMIT
_MARKET = OrderType.MARKET

# Value -> member, for values already validated: calling an enum class costs about ten
# times a dict lookup, and decide runs it for every field of every order.
_SIDE_OF: dict[int, Side] = {int(m): m for m in Side}
_ORDER_TYPE_OF: dict[int, OrderType] = {int(m): m for m in OrderType}
_TIF_OF: dict[int, TimeInForce] = {int(m): m for m in TimeInForce}
_STP_OF: dict[int, SelfTrade] = {int(m): m for m in SelfTrade}

# Rejections about the request id itself are not remembered: remembering them would let
# a malformed request occupy the id a valid retry needs.
_NOT_REMEMBERED = frozenset(
    {
        Reason.DUPLICATE_REQUEST,
        Reason.REQUEST_ID_CONFLICT,
        Reason.INVALID_USER,
        Reason.INVALID_REQUEST_ID,
    }
)

# orders[order_id] fields, by position (a list, for memory and speed).
O_USER, O_SYMBOL, O_SIDE, O_TYPE, O_PRICE, O_LOCK_INDEX, O_LOCK, O_CANCELLING = range(8)


class LedgerError(Exception):
    """Base class of the ledger's errors (not rejections: those are events)."""


class InvariantError(LedgerError):
    """An event or engine output contradicts the state: the log or the engine is wrong.

    Raised instead of applying anything, naming the seq and what did not hold.
    """


class SequenceError(LedgerError):
    """An input arrived out of order: a gap, a reorder or a log that starts late."""


class SnapshotError(LedgerError):
    """A snapshot failed verification (hash, schema version or format)."""


class _SymbolInfo:
    __slots__ = ("symbol", "base_index", "quote_index")

    def __init__(self, symbol: Symbol, base_index: int, quote_index: int) -> None:
        self.symbol = symbol
        self.base_index = base_index
        self.quote_index = quote_index


class State:
    """UBSCore's state: a few plain dicts and lists, owned by one reducer."""

    __slots__ = (
        "seq",
        "shard",
        "request_window",
        "assets",
        "asset_index",
        "symbols",
        "accounts",
        "orders",
        "requests",
        "request_order",
        "deposited",
        "withdrawn",
        "last_input_offset",
        "last_engine_seq",
        "width",
    )

    def __init__(self, shard: int = 0, request_window: int = REQUEST_WINDOW_DEFAULT) -> None:
        if not 0 <= shard < SHARDS_MAX:
            raise ValueError(f"shard {shard} outside 0..{SHARDS_MAX - 1}")
        if request_window < 1:
            raise ValueError(f"request_window {request_window} must be at least 1")
        self.seq = 0
        self.shard = shard
        self.request_window = request_window
        self.assets: list[Asset] = []
        self.asset_index: dict[str, int] = {}
        self.symbols: dict[str, _SymbolInfo] = {}
        self.accounts: dict[int, list[int]] = {}
        self.orders: dict[int, list[Any]] = {}
        # (user << 64 | request_id) -> (fingerprint, seq of the outcome, reason), or for
        # an accepted order its OrderAccepted event, from which _outcome derives the
        # same three (the commonest entry, stored without building two tuples).
        self.requests: dict[int, tuple[tuple[Any, ...], int, int] | OrderAccepted] = {}
        self.request_order: deque[int] = deque()
        # Per asset index: everything ever deposited and withdrawn (for conservation).
        self.deposited: list[int] = []
        self.withdrawn: list[int] = []
        self.last_input_offset = -1
        self.last_engine_seq: dict[str, int] = {}
        # Length of a full account list: 2 * number of assets.
        self.width = 0

    # -- reads -------------------------------------------------------------------------

    def balance(self, user: int, asset: str) -> tuple[int, int]:
        """(available, locked) of ``user`` in ``asset``; (0, 0) for an unknown user."""
        index = self.asset_index[asset]
        account = self.accounts.get(user)
        if account is None or 2 * index >= len(account):
            return 0, 0
        return account[2 * index], account[2 * index + 1]

    def totals(self) -> dict[str, tuple[int, int]]:
        """Per asset: (sum of available, sum of locked) over all accounts."""
        count = len(self.assets)
        available = [0] * count
        locked = [0] * count
        for account in self.accounts.values():
            for index in range(len(account) // 2):
                available[index] += account[2 * index]
                locked[index] += account[2 * index + 1]
        return {asset.code: (available[i], locked[i]) for i, asset in enumerate(self.assets)}

    def conservation_problems(self) -> list[str]:
        """Assets whose available + locked differs from deposits - withdrawals (exact)."""
        problems = []
        for code, (available, locked) in self.totals().items():
            index = self.asset_index[code]
            expected = self.deposited[index] - self.withdrawn[index]
            if available + locked != expected:
                problems.append(
                    f"{code}: available {available} + locked {locked} != "
                    f"deposited {self.deposited[index]} - withdrawn {self.withdrawn[index]}"
                )
        return problems


# -- fingerprints: what makes a retry "the same request" -----------------------------


def _order_fingerprint(o: PlaceOrder | OrderAccepted) -> tuple[Any, ...]:
    # An order's fingerprint reads the same fields from the command or its acceptance.
    return (2, o.symbol, o.side, o.qty, o.price, o.order_type, o.tif, o.quote_budget, o.stp)


def command_fingerprint(command: Command) -> tuple[Any, ...]:
    """The fields of a command that a retry must repeat exactly (not its timestamp)."""
    kind = type(command)
    if kind is Deposit or kind is Withdraw:
        return (0 if kind is Deposit else 1, command.asset, command.amount)  # type: ignore[union-attr]
    if kind is PlaceOrder:
        return _order_fingerprint(command)  # type: ignore[arg-type]
    if kind is CancelOrder:
        return (3, command.order_id)  # type: ignore[union-attr]
    if isinstance(command, ListAsset):
        return (4, command.asset.code, command.asset.decimals)
    assert isinstance(command, ListSymbol)
    s = command.symbol
    return (5, s.name, s.base, s.quote, s.lot, s.tick, s.maker_fee_ppm, s.taker_fee_ppm)


def _command_user(command: Command) -> int:
    kind = type(command)
    if kind is ListAsset or kind is ListSymbol:
        return FEE_ACCOUNT_USER
    return command.user  # type: ignore[union-attr]


def _request_key(user: int, request_id: int) -> int:
    return (user << 64) | request_id


def _is_amount(value: object) -> bool:
    return type(value) is int and 0 < value <= AMOUNT_MAX  # type: ignore[operator]


def order_id_for(shard: int, seq: int) -> int:
    """The order id UBSCore shard ``shard`` assigns to the order accepted at ``seq``."""
    return (shard << ORDER_ID_SHARD_SHIFT) | seq


# -- decide ----------------------------------------------------------------------------


def _reject(state: State, offset: int, reason: int, command: Command) -> list[BalanceEvent]:
    return [Rejected(state.seq + 1, offset, int(reason), command)]


def _outcome(
    seen: tuple[tuple[Any, ...], int, int] | OrderAccepted,
) -> tuple[tuple[Any, ...], int, int]:
    """(fingerprint, seq of the outcome, reason) of a request window entry."""
    if type(seen) is OrderAccepted:
        return _order_fingerprint(seen), seen.seq, 0
    return seen  # type: ignore[return-value]


def _answer_retry(
    state: State, command: Command, offset: int, seen: tuple[tuple[Any, ...], int, int] | OrderAccepted
) -> list[BalanceEvent]:
    """The answer to a request id already in the window: the original outcome if the
    payload is the same, a conflict if not."""
    fingerprint, original_seq, original_reason = _outcome(seen)
    if fingerprint != command_fingerprint(command):
        return _reject(state, offset, Reason.REQUEST_ID_CONFLICT, command)
    return [
        Rejected(
            state.seq + 1,
            offset,
            int(Reason.DUPLICATE_REQUEST),
            command,
            original_seq,
            original_reason,
        )
    ]


def _available(state: State, user: int, index: int) -> tuple[int, int]:
    account = state.accounts.get(user)
    if account is None or 2 * index >= len(account):
        return 0, 0
    return account[2 * index], account[2 * index + 1]


def _decide_deposit(state: State, c: Deposit, offset: int) -> list[BalanceEvent]:
    if c.user == FEE_ACCOUNT_USER:
        return _reject(state, offset, Reason.INVALID_USER, c)
    index = state.asset_index.get(c.asset)
    if index is None:
        return _reject(state, offset, Reason.UNKNOWN_ASSET, c)
    if not _is_amount(c.amount):
        return _reject(state, offset, Reason.INVALID_AMOUNT, c)
    available, locked = _available(state, c.user, index)
    available += c.amount
    if available > AMOUNT_MAX:
        return _reject(state, offset, Reason.BALANCE_OVERFLOW, c)
    return [Deposited(state.seq + 1, offset, c.user, c.request_id, c.asset, c.amount, available, locked, c.ts_ms)]


def _decide_withdraw(state: State, c: Withdraw, offset: int) -> list[BalanceEvent]:
    index = state.asset_index.get(c.asset)
    if index is None:
        return _reject(state, offset, Reason.UNKNOWN_ASSET, c)
    if not _is_amount(c.amount):
        return _reject(state, offset, Reason.INVALID_AMOUNT, c)
    available, locked = _available(state, c.user, index)
    if available < c.amount:
        return _reject(state, offset, Reason.INSUFFICIENT_FUNDS, c)
    return [
        Withdrawn(state.seq + 1, offset, c.user, c.request_id, c.asset, c.amount, available - c.amount, locked, c.ts_ms)
    ]


def _order_problem(c: PlaceOrder) -> Reason | None:
    """What is wrong with an order's shape, independent of balances."""
    if c.side not in (0, 1) or c.order_type not in (0, 1) or c.tif not in (0, 1, 2, 3):
        return Reason.INVALID_ORDER_TYPE
    if c.stp not in (0, 1, 2):
        return Reason.INVALID_ORDER_TYPE
    qty = c.qty
    if type(qty) is not int or not 0 < qty <= ORDER_QTY_LOTS_MAX:
        return Reason.INVALID_QUANTITY
    price, budget = c.price, c.quote_budget
    if type(price) is not int or type(budget) is not int:
        return Reason.INVALID_PRICE if type(price) is not int else Reason.INVALID_AMOUNT
    if c.order_type == _LIMIT:
        if not 0 < price <= ORDER_PRICE_TICKS_MAX:
            return Reason.INVALID_PRICE
        if budget != 0:
            return Reason.INVALID_AMOUNT
        return None
    if price != 0:
        return Reason.INVALID_PRICE
    if c.tif != TimeInForce.IOC and c.tif != TimeInForce.FOK:
        return Reason.INVALID_ORDER_TYPE
    if c.side == _BUY:
        if not _is_amount(budget):
            return Reason.INVALID_AMOUNT
    elif budget != 0:
        return Reason.INVALID_AMOUNT
    return None


def _decide_place(state: State, c: PlaceOrder, offset: int) -> list[BalanceEvent]:
    user = c.user
    if user == FEE_ACCOUNT_USER:
        return _reject(state, offset, Reason.INVALID_USER, c)
    info = state.symbols.get(c.symbol)
    if info is None:
        return _reject(state, offset, Reason.UNKNOWN_SYMBOL, c)
    problem = _order_problem(c)
    if problem is not None:
        return _reject(state, offset, problem, c)
    # Valid from here on: the canonical members, compared by identity (cheaper than an
    # IntEnum's ==).
    try:
        side, order_type = _SIDE_OF[c.side], _ORDER_TYPE_OF[c.order_type]
        tif, stp = _TIF_OF[c.tif], _STP_OF[c.stp]
    except TypeError:  # equal to a valid value but unhashable: the enums look up by ==
        side, order_type = Side(c.side), OrderType(c.order_type)
        tif, stp = TimeInForce(c.tif), SelfTrade(c.stp)
    qty, price = c.qty, c.price
    symbol = info.symbol
    if side is _BUY:
        index = info.quote_index
        lock_asset = symbol.quote
        lock = qty * price * symbol.tick if order_type is _LIMIT else c.quote_budget
    else:
        index = info.base_index
        lock_asset = symbol.base
        lock = qty * symbol.lot
    if lock > AMOUNT_MAX or qty * symbol.lot > AMOUNT_MAX:
        return _reject(state, offset, Reason.INVALID_QUANTITY, c)
    account = state.accounts.get(user)
    if account is None or 2 * index >= len(account):
        available = locked = 0
    else:
        available, locked = account[2 * index], account[2 * index + 1]
    if available < lock:
        return _reject(state, offset, Reason.INSUFFICIENT_FUNDS, c)
    seq = state.seq + 1
    return [
        OrderAccepted(
            seq,
            offset,
            user,
            c.request_id,
            (state.shard << ORDER_ID_SHARD_SHIFT) | seq,  # order_id_for, inlined
            c.symbol,
            side,
            order_type,
            tif,
            stp,
            qty,
            price,
            c.quote_budget,
            lock_asset,
            lock,
            available - lock,
            locked + lock,
            c.ts_ms,
        )
    ]


def _decide_cancel(state: State, c: CancelOrder, offset: int) -> list[BalanceEvent]:
    order = state.orders.get(c.order_id) if type(c.order_id) is int else None
    if order is None:
        return _reject(state, offset, Reason.UNKNOWN_ORDER, c)
    if order[O_USER] != c.user:
        return _reject(state, offset, Reason.NOT_ORDER_OWNER, c)
    if order[O_CANCELLING]:
        return _reject(state, offset, Reason.CANCEL_PENDING, c)
    return [CancelRequested(state.seq + 1, offset, c.user, c.request_id, c.order_id, order[O_SYMBOL], c.ts_ms)]


def _decide_list_asset(state: State, c: ListAsset, offset: int) -> list[BalanceEvent]:
    if c.asset.code in state.asset_index:
        return _reject(state, offset, Reason.ASSET_EXISTS, c)
    return [AssetListed(state.seq + 1, offset, c.request_id, c.asset)]


def _decide_list_symbol(state: State, c: ListSymbol, offset: int) -> list[BalanceEvent]:
    symbol = c.symbol
    if symbol.name in state.symbols:
        return _reject(state, offset, Reason.SYMBOL_EXISTS, c)
    if symbol.base not in state.asset_index or symbol.quote not in state.asset_index:
        return _reject(state, offset, Reason.UNKNOWN_ASSET, c)
    return [SymbolListed(state.seq + 1, offset, c.request_id, symbol)]


_DECIDE_COMMAND: dict[type, Callable[[State, Any, int], list[BalanceEvent]]] = {
    Deposit: _decide_deposit,
    Withdraw: _decide_withdraw,
    PlaceOrder: _decide_place,
    CancelOrder: _decide_cancel,
    ListAsset: _decide_list_asset,
    ListSymbol: _decide_list_symbol,
}


def decide_command(state: State, command: Command, input_offset: int) -> list[BalanceEvent]:
    """Validate ``command`` (read from balance.operations at ``input_offset``) and return
    its one event. Never changes ``state``; never raises for a bad command."""
    kind = type(command)
    handler = _DECIDE_COMMAND.get(kind)
    if handler is None:
        raise TypeError(f"not a command: {kind.__name__}")
    # Checks every command shares: a valid user and request id, and not a retry.
    user = FEE_ACCOUNT_USER if kind is ListAsset or kind is ListSymbol else command.user  # type: ignore[union-attr]
    request_id = command.request_id
    if type(user) is not int or not 0 <= user <= USER_ID_MAX:
        return _reject(state, input_offset, Reason.INVALID_USER, command)
    if type(request_id) is not int or not 0 <= request_id <= REQUEST_ID_MAX:
        return _reject(state, input_offset, Reason.INVALID_REQUEST_ID, command)
    seen = state.requests.get((user << 64) | request_id)  # _request_key, inlined
    if seen is not None:
        return _answer_retry(state, command, input_offset, seen)
    return handler(state, command, input_offset)


def _trade_error(t: Trade | TradeSettled, problem: str) -> InvariantError:
    trade_seq = t.seq if type(t) is Trade else t.engine_seq  # type: ignore[union-attr]
    return InvariantError(f"engine output {t.symbol}#{trade_seq} (trade {t.trade_id}): {problem}")


def _settle_amounts(state: State, t: Trade) -> tuple[_SymbolInfo, list[Any], list[Any], int, int, int, int, int]:
    """Check a trade against the orders it names; return what it moves.

    Returns (symbol info, maker order, taker order, base amount, quote amount, maker fee,
    taker fee, taker refund). Raises InvariantError if the engine's trade is impossible.
    """
    info = state.symbols.get(t.symbol)
    orders = state.orders
    maker = orders.get(t.maker_order_id)
    taker = orders.get(t.taker_order_id)
    if info is None or maker is None or taker is None:
        raise _trade_error(t, "unknown symbol or order")
    if maker[O_USER] != t.maker_user or taker[O_USER] != t.taker_user:
        raise _trade_error(t, "users do not match the orders")
    if maker[O_SYMBOL] != t.symbol or taker[O_SYMBOL] != t.symbol:
        raise _trade_error(t, "an order belongs to another symbol")
    maker_side = t.maker_side
    if maker[O_SIDE] != maker_side or taker[O_SIDE] == maker_side:
        raise _trade_error(t, "sides do not match the orders")
    price = t.price
    if maker[O_TYPE] != _LIMIT or maker[O_PRICE] != price:
        raise _trade_error(t, f"trade price {price} is not the maker's limit")
    qty = t.qty
    if type(qty) is not int or qty <= 0:
        raise _trade_error(t, f"quantity {qty!r} not positive")
    symbol = info.symbol
    base_amount = qty * symbol.lot
    quote_amount = qty * price * symbol.tick
    taker_refund = 0
    if taker[O_TYPE] == _LIMIT:
        if (price < taker[O_PRICE]) if maker_side == _BUY else (price > taker[O_PRICE]):
            raise _trade_error(t, f"trade price {price} beyond the taker's limit")
        if maker_side != _BUY:
            taker_refund = qty * (taker[O_PRICE] - price) * symbol.tick
    if maker_side == _BUY:
        maker_fee = base_amount * symbol.maker_fee_ppm // PPM
        taker_fee = quote_amount * symbol.taker_fee_ppm // PPM
    else:
        maker_fee = quote_amount * symbol.maker_fee_ppm // PPM
        taker_fee = base_amount * symbol.taker_fee_ppm // PPM
    return info, maker, taker, base_amount, quote_amount, maker_fee, taker_fee, taker_refund


def _move_trade(
    buyer: list[int],
    seller: list[int],
    fee: list[int],
    b: int,
    q: int,
    base_amount: int,
    quote_amount: int,
    refund: int,
    buyer_fee: int,
    seller_fee: int,
) -> None:
    """A trade's balance moves, the one definition decide and evolve share. ``b`` and
    ``q`` index the base and quote available slots (locked is the next one); accounts
    may be the same list (a user trading with themself, or the fee account trading).
    The buyer spends locked quote (plus any price-improvement refund, which returns to
    available) and receives base less its fee; the seller spends locked base and
    receives quote less its fee; the fee account receives both fees."""
    buyer[q + 1] -= quote_amount + refund
    buyer[q] += refund
    buyer[b] += base_amount - buyer_fee
    seller[b + 1] -= base_amount
    seller[q] += quote_amount - seller_fee
    fee[b] += buyer_fee
    fee[q] += seller_fee


def _account_copy(state: State, user: int, width: int) -> list[int]:
    account = state.accounts.get(user)
    if account is None:
        return [0] * width
    if len(account) == width:
        return account[:]
    return account + [0] * (width - len(account))


def _decide_trade(state: State, t: Trade) -> list[BalanceEvent]:
    info, maker, taker, base_amount, quote_amount, maker_fee, taker_fee, refund = _settle_amounts(state, t)
    # Work on copies of the three accounts (decide never changes the state). A user
    # trading with themself, or the fee account trading, shares one copy.
    width = state.width
    maker_user, taker_user = t.maker_user, t.taker_user
    mk = _account_copy(state, maker_user, width)
    tk = mk if taker_user == maker_user else _account_copy(state, taker_user, width)
    if maker_user == FEE_ACCOUNT_USER:
        fee = mk
    elif taker_user == FEE_ACCOUNT_USER:
        fee = tk
    else:
        fee = _account_copy(state, FEE_ACCOUNT_USER, width)
    b, q = 2 * info.base_index, 2 * info.quote_index
    maker_buys = t.maker_side == _BUY
    if maker_buys:
        _move_trade(mk, tk, fee, b, q, base_amount, quote_amount, refund, maker_fee, taker_fee)
    else:
        _move_trade(tk, mk, fee, b, q, base_amount, quote_amount, refund, taker_fee, maker_fee)
    # Only these slots moved; every other one was in range before and is unchanged.
    after = (mk[b], mk[b + 1], mk[q], mk[q + 1], tk[b], tk[b + 1], tk[q], tk[q + 1], fee[b], fee[q])
    if min(after) < 0 or max(after) > AMOUNT_MAX:
        raise _trade_error(t, "a balance would leave 0..AMOUNT_MAX")
    if maker_buys:
        maker_lock_after = maker[O_LOCK] - quote_amount
        taker_lock_after = taker[O_LOCK] - base_amount
    else:
        maker_lock_after = maker[O_LOCK] - base_amount
        taker_lock_after = taker[O_LOCK] - quote_amount - refund
    if maker_lock_after < 0 or taker_lock_after < 0:
        raise _trade_error(t, "trade spends more than an order has locked")
    seq = state.seq + 1
    events: list[BalanceEvent] = [
        TradeSettled(
            seq,
            t.symbol,
            t.seq,
            t.trade_id,
            t.price,
            t.qty,
            _SIDE_OF[t.maker_side],
            base_amount,
            quote_amount,
            maker_user,
            t.maker_order_id,
            maker_fee,
            taker_user,
            t.taker_order_id,
            taker_fee,
            refund,
            *after,
            t.maker_done,
            t.taker_done,
        )
    ]
    # An order filled to the end may still hold funds (a market buy's unspent budget):
    # release them now, after the trade, so the order's lock is fully accounted for.
    if (t.maker_done and maker_lock_after > 0) or (t.taker_done and taker_lock_after > 0):
        for done, order, order_id, lock_after, acc in (
            (t.maker_done, maker, t.maker_order_id, maker_lock_after, mk),
            (t.taker_done, taker, t.taker_order_id, taker_lock_after, tk),
        ):
            if done and lock_after > 0:
                seq += 1
                index = 2 * order[O_LOCK_INDEX]
                acc[index] += lock_after
                acc[index + 1] -= lock_after
                events.append(
                    FundsUnlocked(
                        seq,
                        t.symbol,
                        t.seq,
                        order[O_USER],
                        order_id,
                        state.assets[order[O_LOCK_INDEX]].code,
                        lock_after,
                        acc[index],
                        acc[index + 1],
                        UNLOCK_FILLED,
                    )
                )
    return events


_UNLOCK_REASON: dict[type, int] = {
    OrderCancelled: UNLOCK_CANCELLED,
    OrderExpired: UNLOCK_EXPIRED,
    OrderRejected: UNLOCK_REJECTED,
}


def _decide_order_end(state: State, out: OrderCancelled | OrderExpired | OrderRejected) -> list[BalanceEvent]:
    order = state.orders.get(out.order_id)
    if order is None:
        if type(out) is OrderRejected and out.reason == Reason.UNKNOWN_ORDER:
            return []  # a cancel that lost the race with the order's last fill
        raise InvariantError(f"engine output {out.symbol}#{out.seq}: order {out.order_id} is not open at UBSCore")
    index = order[O_LOCK_INDEX]
    available, locked = _available(state, order[O_USER], index)
    amount = order[O_LOCK]
    return [
        FundsUnlocked(
            state.seq + 1,
            out.symbol,
            out.seq,
            order[O_USER],
            out.order_id,
            state.assets[index].code,
            amount,
            available + amount,
            locked - amount,
            _UNLOCK_REASON[type(out)],
        )
    ]


def decide_output(state: State, output: EngineOutput) -> list[BalanceEvent]:
    """Settle one engine output: a trade, or the end of an order. Never changes
    ``state``. Raises InvariantError if the output contradicts UBSCore's orders."""
    kind = type(output)
    if kind is Trade:
        return _decide_trade(state, output)  # type: ignore[arg-type]
    if kind is OrderRested:
        return []
    if kind in _UNLOCK_REASON:
        return _decide_order_end(state, output)  # type: ignore[arg-type]
    raise TypeError(f"not an engine output: {kind.__name__}")


def decide(state: State, item: Input, input_offset: int = -1) -> list[BalanceEvent]:
    """The events ``item`` produces: a command read at ``input_offset`` of
    balance.operations, or an engine output (which carries its own position)."""
    if type(item) in _DECIDE_COMMAND:
        return decide_command(state, item, input_offset)  # type: ignore[arg-type]
    return decide_output(state, item)  # type: ignore[arg-type]


# -- evolve ----------------------------------------------------------------------------


def _account_for(state: State, user: int) -> list[int]:
    account = state.accounts.get(user)
    width = state.width
    if account is not None and len(account) == width:
        return account
    if account is None:
        account = state.accounts[user] = [0] * width
    elif len(account) < width:
        account.extend([0] * (width - len(account)))
    return account


def _remember(state: State, user: int, request_id: int, fingerprint: tuple[Any, ...], seq: int, reason: int) -> None:
    key = _request_key(user, request_id)
    state.requests[key] = (fingerprint, seq, reason)
    state.request_order.append(key)
    if len(state.request_order) > state.request_window:
        del state.requests[state.request_order.popleft()]


def _mismatch(event: BalanceEvent, what: str) -> InvariantError:
    return InvariantError(f"event seq {event.seq} ({type(event).__name__}): {what}")


def _evolve_deposited(state: State, e: Deposited) -> None:
    index = state.asset_index.get(e.asset)
    if index is None:
        raise _mismatch(e, f"unknown asset {e.asset!r}")
    account = state.accounts.get(e.user)
    created = account is None
    if account is None or len(account) != state.width:
        account = _account_for(state, e.user)
    if account[2 * index] + e.amount != e.available or account[2 * index + 1] != e.locked:
        if created:
            del state.accounts[e.user]  # nothing applied: not even an empty account
        raise _mismatch(e, f"balances after ({e.available}, {e.locked}) do not follow from the state")
    account[2 * index] = e.available
    state.deposited[index] += e.amount
    state.last_input_offset = e.input_offset
    _remember(state, e.user, e.request_id, (0, e.asset, e.amount), e.seq, 0)


def _evolve_withdrawn(state: State, e: Withdrawn) -> None:
    index = state.asset_index.get(e.asset)
    if index is None:
        raise _mismatch(e, f"unknown asset {e.asset!r}")
    account = state.accounts.get(e.user)
    created = account is None
    if account is None or len(account) != state.width:
        account = _account_for(state, e.user)
    if account[2 * index] - e.amount != e.available or account[2 * index + 1] != e.locked:
        if created:
            del state.accounts[e.user]  # nothing applied: not even an empty account
        raise _mismatch(e, f"balances after ({e.available}, {e.locked}) do not follow from the state")
    account[2 * index] = e.available
    state.withdrawn[index] += e.amount
    state.last_input_offset = e.input_offset
    _remember(state, e.user, e.request_id, (1, e.asset, e.amount), e.seq, 0)


def _evolve_accepted(state: State, e: OrderAccepted) -> None:
    # The hottest event of a replay: the account lookup and the request memory are
    # inlined (the same steps as _account_for and _remember).
    index = state.asset_index.get(e.lock_asset)
    if index is None or e.symbol not in state.symbols:
        raise _mismatch(e, "unknown symbol or asset")
    orders = state.orders
    order_id = e.order_id
    if order_id in orders:
        raise _mismatch(e, f"order id {order_id} already open")
    user = e.user
    account = state.accounts.get(user)
    created = account is None
    if account is None or len(account) != state.width:
        account = _account_for(state, user)
    i = 2 * index
    amount = e.lock_amount
    available, locked = e.available, e.locked
    if account[i] - amount != available or account[i + 1] + amount != locked:
        if created:
            del state.accounts[user]  # nothing applied: not even an empty account
        raise _mismatch(e, "balances after the lock do not add up")
    account[i] = available
    account[i + 1] = locked
    symbol, side, order_type, price = e.symbol, e.side, e.order_type, e.price
    orders[order_id] = [user, symbol, side, order_type, price, index, amount, False]
    state.last_input_offset = e.input_offset
    key = (user << 64) | e.request_id
    state.requests[key] = e  # its fingerprint, seq and reason 0 are derived by _outcome
    request_order = state.request_order
    request_order.append(key)
    if len(request_order) > state.request_window:
        del state.requests[request_order.popleft()]


def _evolve_cancel_requested(state: State, e: CancelRequested) -> None:
    order = state.orders.get(e.order_id)
    if order is None or order[O_USER] != e.user:
        raise _mismatch(e, f"order {e.order_id} not open for user {e.user}")
    order[O_CANCELLING] = True
    state.last_input_offset = e.input_offset
    _remember(state, e.user, e.request_id, (3, e.order_id), e.seq, 0)


def _evolve_rejected(state: State, e: Rejected) -> None:
    state.last_input_offset = e.input_offset
    if e.reason not in _NOT_REMEMBERED:
        c = e.command
        _remember(state, _command_user(c), c.request_id, command_fingerprint(c), e.seq, e.reason)


def _evolve_asset_listed(state: State, e: AssetListed) -> None:
    if e.asset.code in state.asset_index:
        raise _mismatch(e, f"asset {e.asset.code} listed twice")
    state.asset_index[e.asset.code] = len(state.assets)
    state.assets.append(e.asset)
    state.width = 2 * len(state.assets)
    state.deposited.append(0)
    state.withdrawn.append(0)
    state.last_input_offset = e.input_offset
    a = e.asset
    _remember(state, FEE_ACCOUNT_USER, e.request_id, (4, a.code, a.decimals), e.seq, 0)


def _evolve_symbol_listed(state: State, e: SymbolListed) -> None:
    s = e.symbol
    if s.name in state.symbols or s.base not in state.asset_index or s.quote not in state.asset_index:
        raise _mismatch(e, f"symbol {s.name} listed twice or with unknown assets")
    state.symbols[s.name] = _SymbolInfo(s, state.asset_index[s.base], state.asset_index[s.quote])
    state.last_input_offset = e.input_offset
    fingerprint = (5, s.name, s.base, s.quote, s.lot, s.tick, s.maker_fee_ppm, s.taker_fee_ppm)
    _remember(state, FEE_ACCOUNT_USER, e.request_id, fingerprint, e.seq, 0)


def _evolve_trade(state: State, e: TradeSettled) -> None:
    info, maker, taker, base_amount, quote_amount, maker_fee, taker_fee, refund = _settle_amounts(
        state,
        e,  # type: ignore[arg-type]
    )
    if (
        base_amount != e.base_amount
        or quote_amount != e.quote_amount
        or maker_fee != e.maker_fee
        or taker_fee != e.taker_fee
        or refund != e.taker_refund
    ):
        raise _mismatch(e, "amounts or fees differ from the symbol's definition")
    # The same moves as _decide_trade, in place: this is the second hottest event of a
    # replay. Nothing is changed before every check has passed.
    b, q = 2 * info.base_index, 2 * info.quote_index
    accounts, width = state.accounts, state.width
    maker_user, taker_user = e.maker_user, e.taker_user
    mk = accounts.get(maker_user)
    if mk is None or len(mk) != width:
        mk = _account_for(state, maker_user)
    tk = accounts.get(taker_user)
    if tk is None or len(tk) != width:
        tk = _account_for(state, taker_user)
    fee = accounts.get(FEE_ACCOUNT_USER)
    fee_created = fee is None
    if fee is None or len(fee) != width:
        fee = _account_for(state, FEE_ACCOUNT_USER)
    maker_buys = e.maker_side == _BUY
    if maker_buys:
        buyer, seller, buyer_fee, seller_fee = mk, tk, maker_fee, taker_fee
        maker_lock = maker[O_LOCK] - quote_amount
        taker_lock = taker[O_LOCK] - base_amount
    else:
        buyer, seller, buyer_fee, seller_fee = tk, mk, taker_fee, maker_fee
        maker_lock = maker[O_LOCK] - base_amount
        taker_lock = taker[O_LOCK] - quote_amount - refund
    if maker_lock < 0 or taker_lock < 0:
        if fee_created:
            del accounts[FEE_ACCOUNT_USER]
        raise _mismatch(e, "an order's lock went negative")
    # Each stated balance must equal the state's plus the trade's move: move, compare,
    # and undo the move if they differ.
    before = (buyer[q + 1], buyer[q], buyer[b], seller[b + 1], seller[q], fee[b], fee[q])
    _move_trade(buyer, seller, fee, b, q, base_amount, quote_amount, refund, buyer_fee, seller_fee)
    if (
        mk[b] != e.maker_base_available
        or mk[b + 1] != e.maker_base_locked
        or mk[q] != e.maker_quote_available
        or mk[q + 1] != e.maker_quote_locked
        or tk[b] != e.taker_base_available
        or tk[b + 1] != e.taker_base_locked
        or tk[q] != e.taker_quote_available
        or tk[q + 1] != e.taker_quote_locked
        or fee[b] != e.fee_base_available
        or fee[q] != e.fee_quote_available
    ):
        # Undo: every slot gets its value from before the moves (slots of one shared
        # account were all read before any move, so they agree).
        buyer[q + 1], buyer[q], buyer[b], seller[b + 1], seller[q], fee[b], fee[q] = before
        if fee_created:
            del accounts[FEE_ACCOUNT_USER]
        raise _mismatch(e, "balances after the trade do not add up")
    maker[O_LOCK] = maker_lock
    taker[O_LOCK] = taker_lock
    if e.maker_done and maker_lock == 0:
        del state.orders[e.maker_order_id]
    if e.taker_done and taker_lock == 0:
        del state.orders[e.taker_order_id]
    state.last_engine_seq[e.symbol] = e.engine_seq


def _evolve_unlocked(state: State, e: FundsUnlocked) -> None:
    order = state.orders.get(e.order_id)
    if order is None or order[O_USER] != e.user or order[O_LOCK] != e.amount:
        raise _mismatch(e, f"order {e.order_id} does not hold {e.amount} locked")
    index = order[O_LOCK_INDEX]
    account = _account_for(state, e.user)
    i = 2 * index
    if account[i] + e.amount != e.available or account[i + 1] - e.amount != e.locked:
        raise _mismatch(e, "balances after the unlock do not add up")
    account[i] = e.available
    account[i + 1] = e.locked
    del state.orders[e.order_id]
    state.last_engine_seq[e.symbol] = e.engine_seq


_EVOLVE: dict[type, Callable[[State, Any], None]] = {
    Deposited: _evolve_deposited,
    Withdrawn: _evolve_withdrawn,
    OrderAccepted: _evolve_accepted,
    CancelRequested: _evolve_cancel_requested,
    Rejected: _evolve_rejected,
    AssetListed: _evolve_asset_listed,
    SymbolListed: _evolve_symbol_listed,
    TradeSettled: _evolve_trade,
    FundsUnlocked: _evolve_unlocked,
}


def evolve(state: State, event: BalanceEvent) -> State:
    """Apply one event to ``state`` (in place) and return it.

    The event must be the next in sequence and consistent with the state; otherwise
    ``SequenceError`` or ``InvariantError`` is raised and nothing is applied.
    """
    if event.seq != state.seq + 1:
        raise SequenceError(
            f"balance event seq {event.seq} where {state.seq + 1} was expected"
            + (f" (missing {state.seq + 1}..{event.seq - 1})" if event.seq > state.seq + 1 else "")
        )
    handler = _EVOLVE.get(type(event))
    if handler is None:
        raise TypeError(f"not a balance event: {type(event).__name__}")
    handler(state, event)
    state.seq = event.seq
    return state


def _evolve_all(state: State, events: list[BalanceEvent]) -> None:
    """``evolve`` each of ``events`` (what decide just produced), with evolve's checks."""
    for event in events:
        evolve(state, event)


# -- hashing and snapshots -------------------------------------------------------------

SNAPSHOT_FORMAT = "ubscore-snapshot"


class _Snapshot(msgspec.Struct, frozen=True):
    format: str
    schema: int
    seq: int
    hash: str
    state: dict[str, Any]


def canonical(state: State) -> dict[str, Any]:
    """The state as plain sorted data: the input of the hash and of snapshots."""
    width = 2 * len(state.assets)
    return {
        "seq": state.seq,
        "shard": state.shard,
        "request_window": state.request_window,
        "assets": [[a.code, a.decimals] for a in state.assets],
        "symbols": [
            [s.name, s.base, s.quote, s.lot, s.tick, s.maker_fee_ppm, s.taker_fee_ppm]
            for s in (state.symbols[name].symbol for name in sorted(state.symbols))
        ],
        "accounts": [
            [user, account + [0] * (width - len(account))] for user, account in sorted(state.accounts.items())
        ],
        "orders": [[order_id, *order] for order_id, order in sorted(state.orders.items())],
        "requests": [[key, *_outcome(state.requests[key])] for key in state.request_order],
        "deposited": state.deposited,
        "withdrawn": state.withdrawn,
        "last_input_offset": state.last_input_offset,
        "last_engine_seq": sorted(state.last_engine_seq.items()),
    }


def state_hash(state: State) -> str:
    """blake2b-256 of the canonical encoding: equal states have equal hashes in any
    process, under any PYTHONHASHSEED."""
    return hashlib.blake2b(msgspec.json.encode(canonical(state)), digest_size=32).hexdigest()


def snapshot(state: State) -> bytes:
    """A self-verifying snapshot: seq, hash and schema version with the state."""
    body = canonical(state)
    digest = hashlib.blake2b(msgspec.json.encode(body), digest_size=32).hexdigest()
    return msgspec.json.encode(_Snapshot(SNAPSHOT_FORMAT, SCHEMA_VERSION, state.seq, digest, body))


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
            state.symbols[name] = _SymbolInfo(symbol, state.asset_index[base], state.asset_index[quote])
        state.accounts = {user: account for user, account in body["accounts"]}
        state.orders = {row[0]: [row[1], row[2], Side(row[3]), OrderType(row[4]), *row[5:]] for row in body["orders"]}
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


# -- the reducer object ----------------------------------------------------------------


class UBSCore:
    """The reducer with its state: ``execute`` commands, ``settle`` engine outputs,
    ``apply`` events on replay.

    >>> from ledger.protocol.market import Asset
    >>> core = UBSCore()
    >>> [e.seq for e in core.execute(ListAsset(1, Asset("USDT", 6)), input_offset=0)]
    [1]
    >>> core.execute(Deposit(user=7, request_id=1, asset="USDT", amount=5_000_000), 1)[0].available
    5000000
    """

    def __init__(self, state: State | None = None) -> None:
        self.state = state if state is not None else State()
        # Last engine seq consumed per symbol, including outputs that produced no event
        # (not part of the replayed state: after a restart those are re-read, harmlessly).
        self.engine_cursor: dict[str, int] = dict(self.state.last_engine_seq)

    def execute(self, command: Command, input_offset: int) -> list[BalanceEvent]:
        """decide + evolve for one command; returns its one event."""
        if input_offset <= self.state.last_input_offset:
            raise SequenceError(f"command at offset {input_offset} is not after {self.state.last_input_offset}")
        events = decide_command(self.state, command, input_offset)
        _evolve_all(self.state, events)
        return events

    def settle(self, output: EngineOutput) -> list[BalanceEvent]:
        """decide + evolve for one engine output; a repeat of an output already settled
        returns [] and a gap raises SequenceError (never skipped)."""
        last = self.engine_cursor.get(output.symbol, 0)
        if output.seq <= last:
            return []
        if output.seq != last + 1:
            raise SequenceError(f"engine output {output.symbol}#{output.seq}: missing {last + 1}..{output.seq - 1}")
        events = decide_output(self.state, output)
        _evolve_all(self.state, events)
        self.engine_cursor[output.symbol] = output.seq
        return events

    def apply(self, event: BalanceEvent) -> None:
        """Replay one event (evolve), keeping the engine cursor in step."""
        evolve(self.state, event)
        kind = type(event)
        if kind is TradeSettled or kind is FundsUnlocked:
            self.engine_cursor[event.symbol] = event.engine_seq  # type: ignore[union-attr,index]

    def apply_all(self, events: Iterable[BalanceEvent]) -> None:
        """Replay many events."""
        for event in events:
            self.apply(event)

    def state_hash(self) -> str:
        """See ``state_hash``."""
        return state_hash(self.state)

    def snapshot(self) -> bytes:
        """See ``snapshot``."""
        return snapshot(self.state)

    @classmethod
    def from_snapshot(cls, data: bytes) -> UBSCore:
        """A reducer restored from (and verified against) a snapshot."""
        return cls(restore(data))
