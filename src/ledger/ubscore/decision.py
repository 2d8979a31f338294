"""decide: the events an input produces, without changing the state.

A command gets exactly one event: an acceptance or ``Rejected`` (decide never raises for
a bad command). An engine output gets the settlement of its trade, or the release of an
ended order's lock; one that contradicts UBSCore's orders raises ``InvariantError``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from ledger.protocol.codec import checked_command
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
    REQUEST_ID_MAX,
    USER_ID_MAX,
)
from ledger.protocol.outputs import (
    BookOpened,
    EngineOutput,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderRested,
    Trade,
)
from ledger.protocol.reasons import Reason
from ledger.ubscore.state import (
    O_CANCELLING,
    O_LOCK,
    O_LOCK_INDEX,
    O_SYMBOL,
    O_USER,
    InvariantError,
    State,
    WindowEntry,
    command_user,
    fingerprint,
    outcome,
)
from ledger.ubscore.trade import move_trade, settle_amounts, trade_error

Input = Command | EngineOutput

_BUY = Side.BUY
_LIMIT = OrderType.LIMIT

# Value -> member, for values already validated: calling an enum class costs about ten
# times a dict lookup, and decide runs it for every field of every order.
_SIDE_OF: dict[int, Side] = {int(m): m for m in Side}
_ORDER_TYPE_OF: dict[int, OrderType] = {int(m): m for m in OrderType}
_TIF_OF: dict[int, TimeInForce] = {int(m): m for m in TimeInForce}
_STP_OF: dict[int, SelfTrade] = {int(m): m for m in SelfTrade}
# The seq part of an order id (the acceptance's seq; see ORDER_ID_SHARD_SHIFT).
_ORDER_SEQ_MASK = (1 << ORDER_ID_SHARD_SHIFT) - 1


def _reject(state: State, offset: int, reason: int, command: Command) -> list[BalanceEvent]:
    return [Rejected(state.seq + 1, offset, int(reason), command)]


def _answer_retry(state: State, command: Command, offset: int, seen: WindowEntry) -> list[BalanceEvent]:
    """The answer to a request id already in the window: the original outcome if the
    payload is the same, a conflict if not."""
    original_fingerprint, original_seq, original_reason = outcome(seen)
    if original_fingerprint != fingerprint(command):
        return _reject(state, offset, Reason.REQUEST_ID_CONFLICT, command)
    return [Rejected(state.seq + 1, offset, int(Reason.DUPLICATE_REQUEST), command, original_seq, original_reason)]


def _is_amount(value: object) -> bool:
    return type(value) is int and 0 < value <= AMOUNT_MAX


def _decide_funds(state: State, c: Deposit | Withdraw, offset: int) -> list[BalanceEvent]:
    """A deposit or a withdrawal of available funds: the same checks, then each its own
    limit (a balance never over ``AMOUNT_MAX``, never below zero)."""
    index = state.asset_index.get(c.asset)
    if index is None:
        return _reject(state, offset, Reason.UNKNOWN_ASSET, c)
    if not _is_amount(c.amount):
        return _reject(state, offset, Reason.INVALID_AMOUNT, c)
    available, locked = state.balance_at(c.user, index)
    if isinstance(c, Deposit):
        if available + c.amount > AMOUNT_MAX:
            return _reject(state, offset, Reason.BALANCE_OVERFLOW, c)
        after = available + c.amount
        return [Deposited(state.seq + 1, offset, c.user, c.request_id, c.asset, c.amount, after, locked, c.ts_ms)]
    if available < c.amount:
        return _reject(state, offset, Reason.INSUFFICIENT_FUNDS, c)
    after = available - c.amount
    return [Withdrawn(state.seq + 1, offset, c.user, c.request_id, c.asset, c.amount, after, locked, c.ts_ms)]


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
    open_id = state.order_ids_by_request.get((c.user << 64) | c.request_id)  # request_key, written out
    if open_id is not None:
        # A retry older than the request window whose order is still open: a
        # (user, request_id) names at most one open order, so it is answered as a retry
        # of that order, with its acceptance's seq (the id's low bits).
        original_seq = open_id & _ORDER_SEQ_MASK
        return [Rejected(state.seq + 1, offset, int(Reason.DUPLICATE_REQUEST), c, original_seq, int(Reason.OK))]
    info = state.symbols.get(c.symbol)
    if info is None:
        return _reject(state, offset, Reason.UNKNOWN_SYMBOL, c)
    problem = _order_problem(c)
    if problem is not None:
        return _reject(state, offset, problem, c)
    # Valid from here on: the canonical members, compared by identity (cheaper than an
    # IntEnum's ==).
    side, order_type = _SIDE_OF[c.side], _ORDER_TYPE_OF[c.order_type]
    tif, stp = _TIF_OF[c.tif], _STP_OF[c.stp]
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
    available, locked = state.balance_at(c.user, index)
    if available < lock:
        return _reject(state, offset, Reason.INSUFFICIENT_FUNDS, c)
    seq = state.seq + 1
    # An order id names the shard that owns the order (see ORDER_ID_SHARD_SHIFT).
    order_id = (state.shard << ORDER_ID_SHARD_SHIFT) | seq
    return [
        OrderAccepted(
            seq,
            offset,
            c.user,
            c.request_id,
            order_id,
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
    order_id, order_request_id = c.order_id, c.order_request_id
    by_request = order_id == 0
    if by_request:
        # Named by the placing request: only the user's own requests are keys, so
        # another user's request id is unknown here, never someone else's order.
        if type(order_request_id) is not int or not 0 <= order_request_id <= REQUEST_ID_MAX:
            return _reject(state, offset, Reason.UNKNOWN_ORDER, c)
        order_id = state.order_ids_by_request.get((c.user << 64) | order_request_id)  # request_key
        if order_id is None:
            return _reject(state, offset, Reason.UNKNOWN_ORDER, c)
    elif order_request_id != 0:
        return _reject(state, offset, Reason.UNKNOWN_ORDER, c)  # named two ways: no one order
    order = state.orders.get(order_id) if type(order_id) is int else None
    if order is None:
        return _reject(state, offset, Reason.UNKNOWN_ORDER, c)
    if order[O_USER] != c.user:
        return _reject(state, offset, Reason.NOT_ORDER_OWNER, c)
    if order[O_CANCELLING]:
        return _reject(state, offset, Reason.CANCEL_PENDING, c)
    symbol = order[O_SYMBOL]
    return [
        CancelRequested(
            state.seq + 1, offset, c.user, c.request_id, order_id, symbol, c.ts_ms, order_request_id, by_request
        )
    ]


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


# Each command type's decision, looked up by the command's exact type. A ``match`` on the
# classes costs each failed case an isinstance through msgspec's Struct metaclass (about
# 150 ns here): a cancel went from 1.4 to 2.3 us. tests/test_ubscore_rules.py checks the
# tables name every type once.
_DECIDE_COMMAND: dict[type, Callable[[State, Any, int], list[BalanceEvent]]] = {
    PlaceOrder: _decide_place,
    CancelOrder: _decide_cancel,
    Deposit: _decide_funds,
    Withdraw: _decide_funds,
    ListAsset: _decide_list_asset,
    ListSymbol: _decide_list_symbol,
}
# The commands the fee account may not send: it has no deposits and places no orders.
_NOT_FOR_THE_FEE_ACCOUNT = frozenset({PlaceOrder, Deposit})


def decide_command(state: State, command: Command, input_offset: int) -> list[BalanceEvent]:
    """Validate ``command`` (read from balance.operations at ``input_offset``) against the
    rules and the state, and return its one event. Never changes ``state``.

    The command must keep the schema (``check_command``, or decoded by the strict
    decoder): then every rule it breaks is answered with a ``Rejected``, never raised."""
    kind = type(command)
    handler = _DECIDE_COMMAND.get(kind)
    if handler is None:
        raise TypeError(f"not a command: {kind.__name__}")
    # Checks every command shares: a valid user and request id, and not a retry.
    user = command_user(command)
    request_id = command.request_id
    if type(user) is not int or not 0 <= user <= USER_ID_MAX:
        return _reject(state, input_offset, Reason.INVALID_USER, command)
    if type(request_id) is not int or not 0 <= request_id <= REQUEST_ID_MAX:
        return _reject(state, input_offset, Reason.INVALID_REQUEST_ID, command)
    if user == FEE_ACCOUNT_USER and kind in _NOT_FOR_THE_FEE_ACCOUNT:  # before the window: listings use its ids
        return _reject(state, input_offset, Reason.INVALID_USER, command)
    seen = state.requests.get((user << 64) | request_id)  # request_key, written out as in remember
    if seen is not None:
        return _answer_retry(state, command, input_offset, seen)
    return handler(state, command, input_offset)


def reject_malformed(state: State, input_offset: int, record: bytes | memoryview) -> list[BalanceEvent]:
    """The answer to a record of balance.operations that is not a command of the schema:
    a ``Rejected`` that names the record by size and digest, never quoting it."""
    digest = hashlib.blake2b(record, digest_size=16).hexdigest()
    return [Rejected(state.seq + 1, input_offset, int(Reason.MALFORMED_COMMAND), None, 0, 0, len(record), digest)]


def _decide_trade(state: State, t: Trade) -> list[BalanceEvent]:
    info, maker, taker, base_amount, quote_amount, maker_fee, taker_fee, refund = settle_amounts(state, t)
    # Work on copies of the three accounts (decide never changes the state). A user
    # trading with themself, or the fee account trading, shares one copy.
    accounts = state.accounts
    maker_user, taker_user = t.maker_user, t.taker_user
    mk = (accounts.get(maker_user) or state.new_account())[:]
    tk = mk if taker_user == maker_user else (accounts.get(taker_user) or state.new_account())[:]
    if maker_user == FEE_ACCOUNT_USER:
        fee = mk
    elif taker_user == FEE_ACCOUNT_USER:
        fee = tk
    else:
        fee = (accounts.get(FEE_ACCOUNT_USER) or state.new_account())[:]
    b, q = 2 * info.base_index, 2 * info.quote_index
    maker_buys = t.maker_side == _BUY
    if maker_buys:
        move_trade(mk, tk, fee, b, q, base_amount, quote_amount, refund, maker_fee, taker_fee)
    else:
        move_trade(tk, mk, fee, b, q, base_amount, quote_amount, refund, taker_fee, maker_fee)
    # Only these slots moved; every other one was in range before and is unchanged.
    after = (mk[b], mk[b + 1], mk[q], mk[q + 1], tk[b], tk[b + 1], tk[q], tk[q + 1], fee[b], fee[q])
    if min(after) < 0 or max(after) > AMOUNT_MAX:
        raise trade_error(t, "a balance would leave 0..AMOUNT_MAX")
    if maker_buys:
        maker_lock_after = maker[O_LOCK] - quote_amount
        taker_lock_after = taker[O_LOCK] - base_amount
    else:
        maker_lock_after = maker[O_LOCK] - base_amount
        taker_lock_after = taker[O_LOCK] - quote_amount - refund
    if maker_lock_after < 0 or taker_lock_after < 0:
        raise trade_error(t, "trade spends more than an order has locked")
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


def _decide_order_end(
    state: State, out: OrderCancelled | OrderExpired | OrderRejected, unlock_reason: int
) -> list[BalanceEvent]:
    order = state.orders.get(out.order_id)
    if order is None:
        if isinstance(out, OrderRejected) and out.reason == Reason.UNKNOWN_ORDER:
            return []  # a cancel that lost the race with the order's last fill
        raise InvariantError(f"engine output {out.symbol}#{out.seq}: order {out.order_id} is not open at UBSCore")
    index = order[O_LOCK_INDEX]
    available, locked = state.balance_at(order[O_USER], index)
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
            unlock_reason,
        )
    ]


def _decide_opened(state: State, output: BookOpened) -> list[BalanceEvent]:
    return []  # the engine took in a listing UBSCore made: nothing to settle


def _decide_rested(state: State, output: OrderRested) -> list[BalanceEvent]:
    return []  # a resting order keeps its lock


def _decide_cancelled(state: State, output: OrderCancelled) -> list[BalanceEvent]:
    return _decide_order_end(state, output, UNLOCK_CANCELLED)


def _decide_expired(state: State, output: OrderExpired) -> list[BalanceEvent]:
    return _decide_order_end(state, output, UNLOCK_EXPIRED)


def _decide_rejected(state: State, output: OrderRejected) -> list[BalanceEvent]:
    return _decide_order_end(state, output, UNLOCK_REJECTED)


# Each engine output type's settlement, by exact type (see _DECIDE_COMMAND).
_DECIDE_OUTPUT: dict[type, Callable[[State, Any], list[BalanceEvent]]] = {
    Trade: _decide_trade,
    BookOpened: _decide_opened,
    OrderRested: _decide_rested,
    OrderCancelled: _decide_cancelled,
    OrderExpired: _decide_expired,
    OrderRejected: _decide_rejected,
}


def decide_output(state: State, output: EngineOutput) -> list[BalanceEvent]:
    """Settle one engine output: a trade, or the end of an order. Never changes
    ``state``. Raises InvariantError if the output contradicts UBSCore's orders."""
    handler = _DECIDE_OUTPUT.get(type(output))
    if handler is None:
        raise TypeError(f"not an engine output: {type(output).__name__}")
    return handler(state, output)


def decide(state: State, item: Input, input_offset: int = -1) -> list[BalanceEvent]:
    """The events ``item`` produces: a command read at ``input_offset`` of
    balance.operations, or an engine output (which carries its own position). A command
    that breaks the schema raises ``CommandError`` naming the field."""
    if type(item) in _DECIDE_OUTPUT:
        return decide_output(state, item)
    return decide_command(state, checked_command(item)[1], input_offset)
