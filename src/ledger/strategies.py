"""Hypothesis strategies for commands and events, for property tests of your own.

Requires ``hypothesis`` (``pip install exchange-ledger[test]``). The strategies favour the
cases that break ledgers: a handful of users and assets so that orders collide, amounts
at the edges (1, the balance exactly, ``AMOUNT_MAX``, zero, negative, over the maximum),
and request ids that repeat so that retries and conflicts happen.

>>> from hypothesis import given
>>> from ledger import UBSCore
>>> @given(command_streams())
... def test_never_negative(commands):
...     core = UBSCore()
...     for offset, command in enumerate(commands):
...         core.execute(command, offset)
...     assert all(v >= 0 for a in core.state.accounts.values() for v in a)
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from ledger.protocol.commands import (
    CancelOrder,
    Command,
    Deposit,
    Int64,
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
    BALANCE_EVENT_TYPES,
    AssetListed,
    BalanceEvent,
    NonNegative64,
    Positive64,
    Rejected,
    SymbolListed,
)
from ledger.protocol.limits import AMOUNT_MAX, INT64_MAX, INT64_MIN
from ledger.protocol.market import Asset, Market, Symbol
from ledger.protocol.outputs import ENGINE_OUTPUT_TYPES, EngineOutput

DEFAULT_MARKET = Market(
    [Asset("BTC", 8), Asset("ETH", 18), Asset("USDT", 6)],
    [
        Symbol("BTC-USDT", "BTC", "USDT", lot=10**5, tick=10, maker_fee_ppm=1_000, taker_fee_ppm=2_000),
        Symbol("ETH-USDT", "ETH", "USDT", lot=10**15, tick=1, maker_fee_ppm=0, taker_fee_ppm=500),
    ],
)


def listing_commands(market: Market = DEFAULT_MARKET) -> list[Command]:
    """The ListAsset/ListSymbol commands that open ``market`` (request ids 1, 2, ...)."""
    commands: list[Command] = []
    for asset in market.assets.values():
        commands.append(ListAsset(len(commands) + 1, asset))
    for symbol in market.symbols.values():
        commands.append(ListSymbol(len(commands) + 1, symbol))
    return commands


def amounts(typical_max: int = 10**12) -> st.SearchStrategy[int]:
    """Valid amounts, mostly small, sometimes at the edges (1, ``AMOUNT_MAX``)."""
    return st.one_of(
        st.integers(1, typical_max),
        st.integers(1, 1000),
        st.sampled_from([1, AMOUNT_MAX, AMOUNT_MAX // 2, 2**64, 2**63 - 1]),
    )


def bad_amounts() -> st.SearchStrategy[Any]:
    """Amounts a command must be rejected for."""
    return st.sampled_from([0, -1, -(2**70), AMOUNT_MAX + 1, 2**200])


def commands(
    market: Market = DEFAULT_MARKET,
    users: int = 4,
    request_ids: int = 40,
    order_ids: st.SearchStrategy[int] | None = None,
) -> st.SearchStrategy[Command]:
    """One client command against ``market``: deposits, withdrawals, orders, cancels.

    ``users`` small and ``request_ids`` small make retries and conflicts frequent.
    Cancels pick from ``order_ids`` (default: small ids, so some hit real orders), or
    name the order by its placing request (``order_id`` 0), from the same few request ids.
    """
    user = st.integers(1, users)
    # Mostly fresh ids, sometimes one of a few: retries and conflicts, but not always.
    request_id = st.one_of(st.integers(0, 2**40), st.integers(0, 2**40), st.integers(0, request_ids))
    asset = st.one_of(st.sampled_from(sorted(market.assets)), st.sampled_from(sorted(market.assets)), st.just("NOPE"))
    symbol = st.one_of(
        st.sampled_from(sorted(market.symbols)), st.sampled_from(sorted(market.symbols)), st.just("NOPE-X")
    )
    amount = st.one_of(amounts(), amounts(), amounts(), bad_amounts())
    ts = st.integers(0, 2**41)
    limit = st.builds(
        PlaceOrder,
        user=user,
        request_id=request_id,
        symbol=symbol,
        side=st.sampled_from(Side),
        qty=st.one_of(st.integers(1, 50), st.integers(1, 50), st.sampled_from([0, -1])),
        price=st.one_of(st.integers(95, 105), st.integers(95, 105), st.sampled_from([0, 1, 10**6])),
        order_type=st.just(OrderType.LIMIT),
        tif=st.sampled_from(TimeInForce),
        stp=st.sampled_from(SelfTrade),
        ts_ms=ts,
    )
    market_order = st.builds(
        PlaceOrder,
        user=user,
        request_id=request_id,
        symbol=symbol,
        side=st.sampled_from(Side),
        qty=st.integers(1, 50),
        price=st.just(0),
        order_type=st.just(OrderType.MARKET),
        tif=st.sampled_from([TimeInForce.IOC, TimeInForce.FOK, TimeInForce.GTC]),
        quote_budget=st.one_of(st.just(0), st.integers(1, 10**9)),
        stp=st.sampled_from(SelfTrade),
        ts_ms=ts,
    )
    cancel = st.builds(
        CancelOrder,
        user=user,
        request_id=request_id,
        order_id=order_ids if order_ids is not None else st.integers(1, 200),
        ts_ms=ts,
    )
    # By client order id: the placing request's id, from the few that orders reuse (so
    # some name open orders), sometimes a fresh one, sometimes with an order id too.
    cancel_by_request = st.builds(
        CancelOrder,
        user=user,
        request_id=request_id,
        order_id=st.one_of(st.just(0), st.just(0), st.just(0), st.integers(1, 200)),
        ts_ms=ts,
        order_request_id=st.one_of(st.integers(0, request_ids), st.integers(0, request_ids), request_id),
    )
    deposit = st.builds(Deposit, user=user, request_id=request_id, asset=asset, amount=amount, ts_ms=ts)
    withdraw = st.builds(Withdraw, user=user, request_id=request_id, asset=asset, amount=amount, ts_ms=ts)
    return st.one_of(deposit, withdraw, limit, limit, limit, limit, market_order, cancel, cancel_by_request)


def funding(market: Market = DEFAULT_MARKET, users: int = 4) -> st.SearchStrategy[list[Command]]:
    """Valid deposits of every asset for every user, so later orders can trade."""
    deposits = [
        st.builds(
            Deposit,
            user=st.just(user),
            request_id=st.integers(10**12, 2**62),
            asset=st.just(code),
            amount=st.integers(10**9, 10**13),
        )
        for user in range(1, users + 1)
        for code in sorted(market.assets)
    ]
    return st.tuples(*deposits).map(list)


def command_streams(
    market: Market = DEFAULT_MARKET, users: int = 4, max_size: int = 120
) -> st.SearchStrategy[list[Command]]:
    """A stream that lists ``market``, funds its users, then runs random commands."""
    return st.tuples(funding(market, users), st.lists(commands(market, users), max_size=max_size)).map(
        lambda parts: listing_commands(market) + parts[0] + parts[1]
    )


def _big_ints() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(0, 2**40), st.integers(0, AMOUNT_MAX))


def _positive() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(1, 2**40), st.integers(1, AMOUNT_MAX))


def events() -> st.SearchStrategy[BalanceEvent]:
    """Any UBSCore event with arbitrary (type-correct) field values, for codec tests.

    These are not necessarily events a reducer would produce; to get those, run
    ``command_streams()`` through ``UBSCore``.
    """
    strategies: list[st.SearchStrategy[Any]] = []
    for kind in BALANCE_EVENT_TYPES:
        if kind is Rejected:
            strategies.append(
                st.builds(
                    Rejected,
                    seq=st.integers(1, 2**62),
                    input_offset=st.integers(0, 2**62),
                    reason=st.integers(0, 30),
                    command=commands(),
                    original_seq=st.integers(0, 2**62),
                    original_reason=st.integers(0, 30),
                )
            )
        elif kind is AssetListed:
            strategies.append(
                st.builds(
                    AssetListed,
                    seq=st.integers(1, 2**62),
                    input_offset=st.integers(0, 2**62),
                    request_id=st.integers(0, 2**62),
                    asset=st.sampled_from(list(DEFAULT_MARKET.assets.values())),
                )
            )
        elif kind is SymbolListed:
            strategies.append(
                st.builds(
                    SymbolListed,
                    seq=st.integers(1, 2**62),
                    input_offset=st.integers(0, 2**62),
                    request_id=st.integers(0, 2**62),
                    symbol=st.sampled_from(list(DEFAULT_MARKET.symbols.values())),
                )
            )
        else:
            strategies.append(_builds_by_annotation(kind))
    return st.one_of(strategies)


def engine_outputs() -> st.SearchStrategy[EngineOutput]:
    """Any matching-engine output with arbitrary (type-correct) field values."""
    return st.one_of([_builds_by_annotation(kind) for kind in ENGINE_OUTPUT_TYPES])


def _builds_by_annotation(kind: type) -> st.SearchStrategy[Any]:
    import msgspec

    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in msgspec.structs.fields(kind):
        annotation = field.type
        name = field.name
        if annotation is bool:
            fields[name] = st.booleans()
        elif annotation is str:
            fields[name] = st.sampled_from(["BTC", "USDT", "BTC-USDT", "ETH-USDT"])
        elif isinstance(annotation, type) and issubclass(annotation, int) and annotation is not int:
            fields[name] = st.sampled_from(list(annotation))  # type: ignore[call-overload]  # an IntEnum
        elif name in ("seq", "engine_seq", "input_seq", "trade_id", "order_id", "user"):
            fields[name] = st.integers(0, 2**62)
        elif annotation is Symbol:
            fields[name] = st.sampled_from(list(DEFAULT_MARKET.symbols.values()))
        elif annotation == Int64:
            fields[name] = st.one_of(st.integers(INT64_MIN, INT64_MAX), st.sampled_from([INT64_MIN, 0, INT64_MAX]))
        elif annotation == Positive64:
            fields[name] = st.one_of(st.integers(1, 2**40), st.sampled_from([1, INT64_MAX]))
        elif annotation == NonNegative64:
            fields[name] = st.one_of(st.integers(0, 2**40), st.sampled_from([0, INT64_MAX]))
        elif "Meta(gt=0)" in repr(annotation):
            fields[name] = _positive()
        else:
            fields[name] = _big_ints()
    return st.builds(kind, **fields)
