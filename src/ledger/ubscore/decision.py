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
    ReduceOrder,
    ReplaceOrder,
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
    AmendRequested,
    AmendSettled,
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
    ORDER_AMENDS_PENDING_MAX,
    ORDER_ID_SHARD_SHIFT,
    ORDER_PRICE_TICKS_MAX,
    ORDER_QTY_LOTS_MAX,
    REQUEST_ID_MAX,
    USER_ID_MAX,
)
from ledger.protocol.outputs import (
    AmendRejected,
    BookOpened,
    EngineOutput,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderRested,
    Trade,
)
from ledger.protocol.reasons import Reason
from ledger.ubscore.amend import latest_state, lock_needed, order_lock_needed
from ledger.ubscore.state import (
    O_CANCELLING,
    O_FILLED,
    O_LOCK,
    O_LOCK_INDEX,
    O_PENDING,
    O_PRICE,
    O_QTY,
    O_SIDE,
    O_SYMBOL,
    O_TIF,
    O_TYPE,
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


def _named_order(state: State, user: int, order_id: int, order_request_id: int) -> tuple[int, list[Any]] | Reason:
    """The open order a cancel or an amend names (by id, or with id 0 by its placing
    request), with its id; or why it names none."""
    if order_id == 0:
        # Named by the placing request: only the user's own requests are keys, so
        # another user's request id is unknown here, never someone else's order.
        if type(order_request_id) is not int or not 0 <= order_request_id <= REQUEST_ID_MAX:
            return Reason.UNKNOWN_ORDER
        found = state.order_ids_by_request.get((user << 64) | order_request_id)  # request_key
        if found is None:
            return Reason.UNKNOWN_ORDER
        order_id = found
    elif order_request_id != 0:
        return Reason.UNKNOWN_ORDER  # named two ways: no one order
    order = state.orders.get(order_id) if type(order_id) is int else None
    if order is None:
        return Reason.UNKNOWN_ORDER
    if order[O_USER] != user:
        return Reason.NOT_ORDER_OWNER
    return order_id, order


def _decide_cancel(state: State, c: CancelOrder, offset: int) -> list[BalanceEvent]:
    named = _named_order(state, c.user, c.order_id, c.order_request_id)
    if isinstance(named, Reason):
        return _reject(state, offset, named, c)
    order_id, order = named
    if order[O_CANCELLING]:
        return _reject(state, offset, Reason.CANCEL_PENDING, c)
    symbol = order[O_SYMBOL]
    return [
        CancelRequested(
            state.seq + 1, offset, c.user, c.request_id, order_id, symbol, c.ts_ms, c.order_request_id, c.order_id == 0
        )
    ]


def _amend_problem(order: list[Any]) -> Reason | None:
    """Why ``order`` cannot be amended now, whatever the amend says."""
    if order[O_CANCELLING]:
        return Reason.CANCEL_PENDING
    if order[O_TYPE] != _LIMIT or order[O_TIF] == TimeInForce.IOC or order[O_TIF] == TimeInForce.FOK:
        return Reason.INVALID_ORDER_TYPE  # it never rests: there is nothing to amend
    if len(order[O_PENDING]) >= ORDER_AMENDS_PENDING_MAX:
        return Reason.AMENDS_PENDING_MAX
    return None


def _amend_target(c: ReduceOrder | ReplaceOrder, price_now: int, qty_now: int) -> tuple[int, int] | Reason:
    """The (price, total quantity) an amend asks for, or what is wrong with it."""
    if isinstance(c, ReduceOrder):
        if type(c.qty) is not int or not 0 < c.qty < qty_now:
            return Reason.INVALID_QUANTITY  # a reduce lowers the total; to remove an order, cancel
        return price_now, c.qty
    if type(c.price) is not int or not 0 < c.price <= ORDER_PRICE_TICKS_MAX:
        return Reason.INVALID_PRICE
    if c.stp not in (0, 1, 2):
        return Reason.INVALID_ORDER_TYPE
    qty = c.qty if c.qty != 0 else qty_now
    if type(qty) is not int or not 0 < qty <= ORDER_QTY_LOTS_MAX:
        return Reason.INVALID_QUANTITY
    return c.price, qty


def _decide_amend(state: State, c: ReduceOrder | ReplaceOrder, offset: int) -> list[BalanceEvent]:
    named = _named_order(state, c.user, c.order_id, c.order_request_id)
    if isinstance(named, Reason):
        return _reject(state, offset, named, c)
    order_id, order = named
    problem = _amend_problem(order)
    if problem is not None:
        return _reject(state, offset, problem, c)
    price_now, qty_now = latest_state(order)
    target = _amend_target(c, price_now, qty_now)
    if isinstance(target, Reason):
        return _reject(state, offset, target, c)
    price, qty = target
    info = state.symbols[order[O_SYMBOL]]
    symbol = info.symbol
    buy = order[O_SIDE] == _BUY
    if qty * symbol.lot > AMOUNT_MAX or (buy and qty * price * symbol.tick > AMOUNT_MAX):
        return _reject(state, offset, Reason.INVALID_QUANTITY, c)
    pending = (*order[O_PENDING], target)
    extra = max(0, order_lock_needed(symbol, order, pending) - order[O_LOCK])
    index = order[O_LOCK_INDEX]
    available, locked = state.balance_at(c.user, index)
    if available < extra:
        return _reject(state, offset, Reason.INSUFFICIENT_FUNDS, c)
    if locked + extra > AMOUNT_MAX:
        return _reject(state, offset, Reason.BALANCE_OVERFLOW, c)
    reduce = isinstance(c, ReduceOrder)
    stp = SelfTrade.CANCEL_TAKER if reduce else _STP_OF[c.stp]
    return [
        AmendRequested(
            state.seq + 1,
            offset,
            c.user,
            c.request_id,
            order_id,
            order[O_SYMBOL],
            _SIDE_OF[order[O_SIDE]],
            reduce,
            price,
            qty,
            qty_now,
            stp,
            order[O_TIF] == TimeInForce.POST_ONLY,
            state.assets[index].code,
            extra,
            available - extra,
            locked + extra,
            c.ts_ms,
            c.order_request_id,
            c.order_id == 0,
            not reduce and c.qty == 0,
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
    ReduceOrder: _decide_amend,
    ReplaceOrder: _decide_amend,
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


def _amend_settled(
    state: State, out: OrderAmended | AmendRejected, order: list[Any], confirmed: tuple[int, int], reason: int
) -> list[BalanceEvent]:
    """The release once the engine answered the order's oldest pending amend and the
    order is ``confirmed`` (its new state, or its old one if the amend was refused)."""
    symbol = state.symbols[out.symbol].symbol
    rest = order[O_PENDING][1:]
    release = order[O_LOCK] - lock_needed(symbol, order[O_SIDE], order[O_FILLED], (confirmed, *rest))
    if release < 0:
        raise InvariantError(f"engine output {out.symbol}#{out.seq}: order {out.order_id} would need more locked")
    index = order[O_LOCK_INDEX]
    available, locked = state.balance_at(order[O_USER], index)
    price, qty = confirmed
    return [
        AmendSettled(
            state.seq + 1,
            out.symbol,
            out.seq,
            order[O_USER],
            out.order_id,
            reason,
            price,
            qty,
            qty - order[O_FILLED],
            state.assets[index].code,
            release,
            available + release,
            locked - release,
        )
    ]


def _pending_order(state: State, out: OrderAmended | AmendRejected) -> list[Any]:
    order = state.orders.get(out.order_id)
    if order is None or order[O_USER] != out.user or not order[O_PENDING]:
        raise InvariantError(f"engine output {out.symbol}#{out.seq}: order {out.order_id} has no amend pending")
    return order


def _decide_amended(state: State, out: OrderAmended) -> list[BalanceEvent]:
    order = _pending_order(state, out)
    if order[O_PENDING][0] != (out.price, out.qty) or out.qty_remaining != out.qty - order[O_FILLED]:
        raise InvariantError(
            f"engine output {out.symbol}#{out.seq}: order {out.order_id} amended to {out.qty_remaining} of "
            f"{out.qty} at {out.price}, not the amend pending with {order[O_FILLED]} filled"
        )
    return _amend_settled(state, out, order, (out.price, out.qty), 0)


def _decide_amend_rejected(state: State, out: AmendRejected) -> list[BalanceEvent]:
    if out.reason == Reason.UNKNOWN_ORDER and out.order_id not in state.orders:
        return []  # the order ended before the amend reached the engine; its end released all
    if out.reason != Reason.POST_ONLY_WOULD_TAKE:
        raise InvariantError(f"engine output {out.symbol}#{out.seq}: amend refusal {out.reason} of an open order")
    order = _pending_order(state, out)
    return _amend_settled(state, out, order, (order[O_PRICE], order[O_QTY]), out.reason)


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
    OrderAmended: _decide_amended,
    AmendRejected: _decide_amend_rejected,
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
