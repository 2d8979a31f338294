"""A trade's arithmetic, the one definition that decide and evolve share.

``settle_amounts`` checks an engine's trade (or a recorded ``TradeSettled``) against the
orders it names and derives what it moves; ``move_trade`` applies those moves to the
three accounts involved.
"""

from __future__ import annotations

from typing import Any

from ledger.protocol.commands import OrderType, Side
from ledger.protocol.events import TradeSettled
from ledger.protocol.limits import PPM
from ledger.protocol.outputs import Trade
from ledger.ubscore.state import O_PRICE, O_SIDE, O_SYMBOL, O_TYPE, O_USER, InvariantError, State, SymbolInfo

_BUY = Side.BUY
_LIMIT = OrderType.LIMIT


def trade_error(t: Trade | TradeSettled, problem: str) -> InvariantError:
    """An engine trade (or its settlement) that cannot be: named by symbol, engine seq
    and trade id."""
    trade_seq = t.seq if isinstance(t, Trade) else t.engine_seq
    return InvariantError(f"engine output {t.symbol}#{trade_seq} (trade {t.trade_id}): {problem}")


def settle_amounts(
    state: State, t: Trade | TradeSettled
) -> tuple[SymbolInfo, list[Any], list[Any], int, int, int, int, int]:
    """Check a trade against the orders it names; return what it moves.

    Returns (symbol info, maker order, taker order, base amount, quote amount, maker fee,
    taker fee, taker refund). Raises InvariantError if the trade is impossible.
    """
    info = state.symbols.get(t.symbol)
    orders = state.orders
    maker = orders.get(t.maker_order_id)
    taker = orders.get(t.taker_order_id)
    if info is None or maker is None or taker is None:
        raise trade_error(t, "unknown symbol or order")
    if maker[O_USER] != t.maker_user or taker[O_USER] != t.taker_user:
        raise trade_error(t, "users do not match the orders")
    if maker[O_SYMBOL] != t.symbol or taker[O_SYMBOL] != t.symbol:
        raise trade_error(t, "an order belongs to another symbol")
    maker_side = t.maker_side
    if maker[O_SIDE] != maker_side or taker[O_SIDE] == maker_side:
        raise trade_error(t, "sides do not match the orders")
    price = t.price
    if maker[O_TYPE] != _LIMIT or maker[O_PRICE] != price:
        raise trade_error(t, f"trade price {price} is not the maker's limit")
    qty = t.qty
    if type(qty) is not int or qty <= 0:
        raise trade_error(t, f"quantity {qty!r} not positive")
    symbol = info.symbol
    base_amount = qty * symbol.lot
    quote_amount = qty * price * symbol.tick
    taker_refund = 0
    if taker[O_TYPE] == _LIMIT:
        if (price < taker[O_PRICE]) if maker_side == _BUY else (price > taker[O_PRICE]):
            raise trade_error(t, f"trade price {price} beyond the taker's limit")
        if maker_side != _BUY:
            taker_refund = qty * (taker[O_PRICE] - price) * symbol.tick
    if maker_side == _BUY:
        maker_fee = base_amount * symbol.maker_fee_ppm // PPM
        taker_fee = quote_amount * symbol.taker_fee_ppm // PPM
    else:
        maker_fee = quote_amount * symbol.maker_fee_ppm // PPM
        taker_fee = base_amount * symbol.taker_fee_ppm // PPM
    return info, maker, taker, base_amount, quote_amount, maker_fee, taker_fee, taker_refund


def move_trade(
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
    """A trade's balance moves. ``b`` and ``q`` index the base and quote available slots
    (locked is the next one); accounts may be the same list (a user trading with
    themself, or the fee account trading). The buyer spends locked quote (plus any
    price-improvement refund, which returns to available) and receives base less its
    fee; the seller spends locked base and receives quote less its fee; the fee account
    receives both fees."""
    buyer[q + 1] -= quote_amount + refund
    buyer[q] += refund
    buyer[b] += base_amount - buyer_fee
    seller[b + 1] -= base_amount
    seller[q] += quote_amount - seller_fee
    fee[b] += buyer_fee
    fee[q] += seller_fee
