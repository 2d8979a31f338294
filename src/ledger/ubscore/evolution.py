"""evolve: apply one event to the state, after checking it against the state.

The live path is decide-then-evolve; replay is evolve alone. Every event is re-checked
(the balances it states must be the ones its amounts produce from the state), so a
replay is also an audit. A refused event changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ledger.protocol.commands import Side, TimeInForce
from ledger.protocol.events import (
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
from ledger.protocol.limits import FEE_ACCOUNT_USER, ORDER_AMENDS_PENDING_MAX
from ledger.ubscore.amend import latest_state, lock_needed, order_lock_needed
from ledger.ubscore.state import (
    NOT_REMEMBERED,
    O_CANCELLING,
    O_FILLED,
    O_LOCK,
    O_LOCK_INDEX,
    O_PENDING,
    O_PRICE,
    O_QTY,
    O_REQUEST_KEY,
    O_SIDE,
    O_SYMBOL,
    O_TIF,
    O_USER,
    InvariantError,
    SequenceError,
    State,
    SymbolInfo,
    command_user,
    remember,
)
from ledger.ubscore.trade import move_trade, settle_amounts

_BUY = Side.BUY


def _mismatch(event: BalanceEvent, what: str) -> InvariantError:
    return InvariantError(f"event seq {event.seq} ({type(event).__name__}): {what}")


def _evolve_funds(state: State, e: Deposited | Withdrawn, moved: int, totals: list[int]) -> None:
    """A deposit (``moved`` = +amount) or a withdrawal (-amount) of available funds;
    ``totals`` is the state's running sum of the kind."""
    index = state.asset_index.get(e.asset)
    if index is None:
        raise _mismatch(e, f"unknown asset {e.asset!r}")
    account = state.accounts.get(e.user) or state.new_account()
    if account[2 * index] + moved != e.available or account[2 * index + 1] != e.locked:
        raise _mismatch(e, f"balances after ({e.available}, {e.locked}) do not follow from the state")
    account[2 * index] = e.available
    state.accounts[e.user] = account
    totals[index] += e.amount
    state.last_input_offset = e.input_offset
    remember(state, e.user, e.request_id, e)


def _evolve_deposited(state: State, e: Deposited) -> None:
    _evolve_funds(state, e, e.amount, state.deposited)


def _evolve_withdrawn(state: State, e: Withdrawn) -> None:
    _evolve_funds(state, e, -e.amount, state.withdrawn)


def _evolve_accepted(state: State, e: OrderAccepted) -> None:
    index = state.asset_index.get(e.lock_asset)
    if index is None or e.symbol not in state.symbols:
        raise _mismatch(e, "unknown symbol or asset")
    order_id = e.order_id
    if order_id in state.orders:
        raise _mismatch(e, f"order id {order_id} already open")
    user, amount, i = e.user, e.lock_amount, 2 * index
    key = (user << 64) | e.request_id  # request_key, written out: once per order
    if key in state.order_ids_by_request:
        raise _mismatch(e, f"request {e.request_id} of user {user} names open order {state.order_ids_by_request[key]}")
    account = state.accounts.get(user) or state.new_account()
    if account[i] - amount != e.available or account[i + 1] + amount != e.locked:
        raise _mismatch(e, "balances after the lock do not add up")
    account[i] = e.available
    account[i + 1] = e.locked
    state.accounts[user] = account
    state.orders[order_id] = [
        user, e.symbol, e.side, e.order_type, e.price, index, amount, False, key, e.qty, 0, e.tif, ()
    ]
    state.order_ids_by_request[key] = order_id
    state.last_input_offset = e.input_offset
    remember(state, user, e.request_id, e)


def _evolve_cancel_requested(state: State, e: CancelRequested) -> None:
    order = state.orders.get(e.order_id)
    if order is None or order[O_USER] != e.user:
        raise _mismatch(e, f"order {e.order_id} not open for user {e.user}")
    if e.by_request:
        if order[O_REQUEST_KEY] != (e.user << 64) | e.order_request_id:  # request_key
            raise _mismatch(e, f"order {e.order_id} was not placed by request {e.order_request_id}")
    elif e.order_request_id != 0:
        raise _mismatch(e, "a cancel by order id names a request too")
    order[O_CANCELLING] = True
    state.last_input_offset = e.input_offset
    remember(state, e.user, e.request_id, e)


def _evolve_amend_requested(state: State, e: AmendRequested) -> None:
    order = state.orders.get(e.order_id)
    if order is None or order[O_USER] != e.user or order[O_SYMBOL] != e.symbol or order[O_SIDE] != e.side:
        raise _mismatch(e, f"order {e.order_id} not open for user {e.user} on {e.symbol}")
    if e.by_request:
        if order[O_REQUEST_KEY] != (e.user << 64) | e.order_request_id:  # request_key
            raise _mismatch(e, f"order {e.order_id} was not placed by request {e.order_request_id}")
    elif e.order_request_id != 0:
        raise _mismatch(e, "an amend by order id names a request too")
    if order[O_CANCELLING] or len(order[O_PENDING]) >= ORDER_AMENDS_PENDING_MAX:
        raise _mismatch(e, f"order {e.order_id} is being cancelled or has too many amends pending")
    if order[O_TIF] in (TimeInForce.IOC, TimeInForce.FOK) or e.post_only != (order[O_TIF] == TimeInForce.POST_ONLY):
        raise _mismatch(e, f"order {e.order_id}: its time in force does not allow this amend")
    price_now, qty_now = latest_state(order)
    if e.qty_before != qty_now or (e.keep_priority and (e.price != price_now or e.qty >= qty_now)):
        raise _mismatch(e, f"order {e.order_id} has total {qty_now} at {price_now}")
    index = order[O_LOCK_INDEX]
    if state.assets[index].code != e.lock_asset:
        raise _mismatch(e, f"order {e.order_id} locks another asset than {e.lock_asset}")
    pending = (*order[O_PENDING], (e.price, e.qty))
    extra = max(0, order_lock_needed(state.symbols[e.symbol].symbol, order, pending) - order[O_LOCK])
    if extra != e.lock_amount:
        raise _mismatch(e, f"locks {e.lock_amount} more, the amend needs {extra}")
    account = state.accounts[e.user]  # it holds the order's lock
    i = 2 * index
    if account[i] - extra != e.available or account[i + 1] + extra != e.locked:
        raise _mismatch(e, "balances after the lock do not add up")
    account[i] = e.available
    account[i + 1] = e.locked
    order[O_LOCK] += extra
    order[O_PENDING] = pending
    state.last_input_offset = e.input_offset
    remember(state, e.user, e.request_id, e)


def _evolve_amend_settled(state: State, e: AmendSettled) -> None:
    order = state.orders.get(e.order_id)
    if order is None or order[O_USER] != e.user or order[O_SYMBOL] != e.symbol or not order[O_PENDING]:
        raise _mismatch(e, f"order {e.order_id} of user {e.user} has no amend pending on {e.symbol}")
    head, rest = order[O_PENDING][0], order[O_PENDING][1:]
    if e.reason == 0:
        if (e.price, e.qty) != head or e.qty_remaining != e.qty - order[O_FILLED]:
            raise _mismatch(e, f"order {e.order_id} was to become {head[1]} at {head[0]}, {order[O_FILLED]} filled")
        confirmed = (e.price, e.qty)
    elif (e.price, e.qty) != (order[O_PRICE], order[O_QTY]) or e.qty_remaining != e.qty - order[O_FILLED]:
        raise _mismatch(e, f"a refused amend leaves order {e.order_id} as it was")
    else:
        confirmed = (order[O_PRICE], order[O_QTY])
    symbol = state.symbols[e.symbol].symbol
    release = order[O_LOCK] - lock_needed(symbol, order[O_SIDE], order[O_FILLED], (confirmed, *rest))
    index = order[O_LOCK_INDEX]
    if release < 0 or release != e.amount or state.assets[index].code != e.asset:
        raise _mismatch(e, f"releases {e.amount} {e.asset}; the order's new state frees {release}")
    account = state.accounts[e.user]
    i = 2 * index
    if account[i] + release != e.available or account[i + 1] - release != e.locked:
        raise _mismatch(e, "balances after the release do not add up")
    account[i] = e.available
    account[i + 1] = e.locked
    order[O_LOCK] -= release
    order[O_PRICE], order[O_QTY] = confirmed
    order[O_PENDING] = rest
    state.last_engine_seq[e.symbol] = e.engine_seq


def _evolve_rejected(state: State, e: Rejected) -> None:
    state.last_input_offset = e.input_offset
    if e.command is not None and e.reason not in NOT_REMEMBERED:
        remember(state, command_user(e.command), e.command.request_id, e)


def _evolve_asset_listed(state: State, e: AssetListed) -> None:
    if e.asset.code in state.asset_index:
        raise _mismatch(e, f"asset {e.asset.code} listed twice")
    state.asset_index[e.asset.code] = len(state.assets)
    state.assets.append(e.asset)
    state.width = 2 * len(state.assets)
    for account in state.accounts.values():
        account += (0, 0)
    state.deposited.append(0)
    state.withdrawn.append(0)
    state.last_input_offset = e.input_offset
    remember(state, FEE_ACCOUNT_USER, e.request_id, e)


def _evolve_symbol_listed(state: State, e: SymbolListed) -> None:
    s = e.symbol
    if s.name in state.symbols or s.base not in state.asset_index or s.quote not in state.asset_index:
        raise _mismatch(e, f"symbol {s.name} listed twice or with unknown assets")
    state.symbols[s.name] = SymbolInfo(s, state.asset_index[s.base], state.asset_index[s.quote])
    state.last_input_offset = e.input_offset
    remember(state, FEE_ACCOUNT_USER, e.request_id, e)


def _evolve_trade(state: State, e: TradeSettled) -> None:
    info, maker, taker, base_amount, quote_amount, maker_fee, taker_fee, refund = settle_amounts(state, e)
    if (
        base_amount != e.base_amount
        or quote_amount != e.quote_amount
        or maker_fee != e.maker_fee
        or taker_fee != e.taker_fee
        or refund != e.taker_refund
    ):
        raise _mismatch(e, "amounts or fees differ from the symbol's definition")
    if e.maker_side == _BUY:
        maker_lock = maker[O_LOCK] - quote_amount
        taker_lock = taker[O_LOCK] - base_amount
    else:
        maker_lock = maker[O_LOCK] - base_amount
        taker_lock = taker[O_LOCK] - quote_amount - refund
    if maker_lock < 0 or taker_lock < 0:
        raise _mismatch(e, "an order's lock went negative")
    # The moves are made in place, compared with the stated balances, and undone if they
    # differ: this is the second hottest event of a replay, and in-place moves spare
    # three account copies. A new fee account joins the state only if the trade holds.
    accounts = state.accounts
    mk = accounts.get(e.maker_user) or state.new_account()
    tk = accounts.get(e.taker_user) or state.new_account()
    fee = accounts.get(FEE_ACCOUNT_USER) or state.new_account()
    b, q = 2 * info.base_index, 2 * info.quote_index
    if e.maker_side == _BUY:
        buyer, seller, buyer_fee, seller_fee = mk, tk, maker_fee, taker_fee
    else:
        buyer, seller, buyer_fee, seller_fee = tk, mk, taker_fee, maker_fee
    before = (buyer[q + 1], buyer[q], buyer[b], seller[b + 1], seller[q], fee[b], fee[q])
    move_trade(buyer, seller, fee, b, q, base_amount, quote_amount, refund, buyer_fee, seller_fee)
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
        # Every moved slot gets its value from before (slots of one shared account were
        # all read before any move, so they agree).
        buyer[q + 1], buyer[q], buyer[b], seller[b + 1], seller[q], fee[b], fee[q] = before
        raise _mismatch(e, "balances after the trade do not add up")
    accounts[FEE_ACCOUNT_USER] = fee
    maker[O_LOCK] = maker_lock
    taker[O_LOCK] = taker_lock
    maker[O_FILLED] += e.qty
    taker[O_FILLED] += e.qty
    if e.maker_done and maker_lock == 0:
        del state.orders[e.maker_order_id]
        del state.order_ids_by_request[maker[O_REQUEST_KEY]]
    if e.taker_done and taker_lock == 0:
        del state.orders[e.taker_order_id]
        del state.order_ids_by_request[taker[O_REQUEST_KEY]]
    state.last_engine_seq[e.symbol] = e.engine_seq


def _evolve_unlocked(state: State, e: FundsUnlocked) -> None:
    order = state.orders.get(e.order_id)
    if order is None or order[O_USER] != e.user or order[O_LOCK] != e.amount:
        raise _mismatch(e, f"order {e.order_id} does not hold {e.amount} locked")
    index = order[O_LOCK_INDEX]
    account = state.accounts[e.user]  # it holds the order's lock
    if account[2 * index] + e.amount != e.available or account[2 * index + 1] - e.amount != e.locked:
        raise _mismatch(e, "balances after the unlock do not add up")
    account[2 * index] = e.available
    account[2 * index + 1] = e.locked
    del state.orders[e.order_id]
    del state.order_ids_by_request[order[O_REQUEST_KEY]]
    state.last_engine_seq[e.symbol] = e.engine_seq


# Each event type's handler, looked up by the event's exact type: a replay's hottest
# branch. A ``match`` on the classes (isinstance through msgspec's Struct metaclass)
# measured 10% slower over a whole replay (docs/benchmarks.md, the layering change);
# tests/test_ubscore_rules.py checks the table names every event type once.
_EVOLVE: dict[type, Callable[[State, Any], None]] = {
    OrderAccepted: _evolve_accepted,
    TradeSettled: _evolve_trade,
    FundsUnlocked: _evolve_unlocked,
    CancelRequested: _evolve_cancel_requested,
    AmendRequested: _evolve_amend_requested,
    AmendSettled: _evolve_amend_settled,
    Rejected: _evolve_rejected,
    Deposited: _evolve_deposited,
    Withdrawn: _evolve_withdrawn,
    AssetListed: _evolve_asset_listed,
    SymbolListed: _evolve_symbol_listed,
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


def evolve_all(state: State, events: list[BalanceEvent]) -> None:
    """``evolve`` each of ``events`` (what decide just produced), with evolve's checks."""
    for event in events:
        evolve(state, event)
