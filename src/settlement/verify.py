"""Compare a projection with a fresh replay of the logs it was projected from.

``verify_store`` replays balance.events into a new UBSCore (which re-checks every event)
and compares, exactly: every user's balance of every asset, the number of settled
trades, every order's fills (both sides of every trade), the per-asset totals, and the
stream's checkpoint. Given the engine.outputs logs, it also rebuilds each symbol's book
with the matching engine's own replay (``MatchingEngine.apply``, which checks every
output against the book) and compares its price levels with ``depth_levels``, and the
engine stream's checkpoint with the log's last seq. Open faults count as differences
too. Every difference is listed; none is summarized away.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from ledger.logs import layout
from ledger.logs.base import Log, scan
from ledger.protocol.codec import EVENTS
from ledger.protocol.events import TradeSettled
from ledger.rebuild import replay
from settlement.model import depth_rank
from settlement.store import Store

# Differences listed in full before the rest are only counted (a broken projection can
# differ in millions of rows; the first ones say what is wrong).
DIFFERENCES_LISTED_MAX = 1_000


class VerifyReport(msgspec.Struct):
    """``ok`` is True only if nothing differs."""

    ok: bool
    differences: list[str]
    differences_total: int
    balances_checked: int
    trades_in_log: int
    trades_in_store: int
    final_seq: int
    checkpoint_seq: int
    # Fill rows (one per order per trade) the log implies, and those in the store.
    fills_in_log: int = 0
    fills_in_store: int = 0
    # Symbols whose depth was rebuilt from their engine.outputs and compared.
    depth_symbols_checked: int = 0
    depth_levels_checked: int = 0
    # Symbols with depth rows whose engine.outputs were not given (a Kafka verify names
    # only the balance topic): not compared, and so not a difference.
    depth_symbols_unchecked: list[str] = msgspec.field(default_factory=list)


def _fills(event: TradeSettled) -> list[tuple[tuple[int, int], tuple[Any, ...]]]:
    """The two fill rows of a trade, keyed (order_id, trade_id): what ``order_fills``
    must hold, straight from the event."""
    common = (event.price, event.qty, event.base_amount, event.quote_amount)
    maker_side = int(event.maker_side)
    head = (event.symbol, event.seq, event.engine_seq)
    return [
        ((event.maker_order_id, event.trade_id), (*head, event.maker_user, True, maker_side, *common, event.maker_fee)),
        (
            (event.taker_order_id, event.trade_id),
            (*head, event.taker_user, False, 1 - maker_side, *common, event.taker_fee),
        ),
    ]


_FILL_COLUMNS = (
    "symbol",
    "seq",
    "engine_seq",
    "user",
    "maker",
    "side",
    "price",
    "qty",
    "base_amount",
    "quote_amount",
    "fee",
)


# Rebuilds a symbol's price levels, (side, price) -> (lots, orders), and the last seq from
# its engine outputs log, by the matching engine's own replay; raises ``ValueError`` when
# the log does not rebuild a book. Passed in by the app layer (``ledger.app.books``):
# settlement does not import the matching engine.
BookLevels = Callable[[str, Log], tuple[dict[tuple[int, int], tuple[int, int]], int]]


def verify_store(
    store: Store,
    events: Log,
    stream: str = layout.EVENTS,
    outputs: Mapping[str, Log] | None = None,
    book_levels: BookLevels | None = None,
) -> VerifyReport:
    """Replay ``events`` (and ``outputs``: symbol -> its engine.outputs log, if given,
    with ``book_levels`` to rebuild each symbol's book from it) and compare the
    projection in ``store`` with them."""
    if outputs and book_levels is None:
        raise ValueError("verify_store: outputs given without book_levels to rebuild their books")
    differences: list[str] = []
    total = 0

    def differ(text: str) -> None:
        nonlocal total
        total += 1
        if len(differences) < DIFFERENCES_LISTED_MAX:
            differences.append(text)

    core = replay(events)
    state = core.state
    trades_in_log = 0
    fills: dict[tuple[int, int], tuple[Any, ...]] = {}
    for batch in scan(events):
        for raw in batch.values:
            # The tag is the first element of the array; decoding everything again is
            # simpler than peeking and costs only the audit's time.
            event = EVENTS.decode(raw)
            if type(event) is TradeSettled:
                trades_in_log += 1
                fills.update(_fills(event))

    stored: dict[tuple[int, str], tuple[int, int]] = {}
    for row in store.scan("balances"):
        stored[(row["user"], row["asset"])] = (row["available"], row["locked"])
    checked = 0
    codes = [a.code for a in state.assets]
    expected_keys: set[tuple[int, str]] = set()
    for user in sorted(state.accounts):
        account = state.accounts[user]
        for index in range(len(account) // 2):
            key = (user, codes[index])
            expected = (account[2 * index], account[2 * index + 1])
            got = stored.get(key, (0, 0))
            checked += 1
            expected_keys.add(key)
            if got != expected:
                differ(f"balance user {user} {codes[index]}: store {got} != replay {expected} (available, locked)")
    for key in sorted(set(stored) - expected_keys):
        if stored[key] != (0, 0):
            differ(f"balance user {key[0]} {key[1]}: store {stored[key]}, but the replay has no such balance")

    store_totals: dict[str, list[int]] = {}
    for (_user, code), (available, locked) in stored.items():
        sums = store_totals.setdefault(code, [0, 0])
        sums[0] += available
        sums[1] += locked
    for code, (available, locked) in state.totals().items():
        got_total = tuple(store_totals.get(code, [0, 0]))
        if got_total != (available, locked):
            differ(f"totals {code}: store {got_total} != replay {(available, locked)} (available, locked)")

    trades_in_store = sum(1 for _ in store.scan("settled_trades"))
    if trades_in_store != trades_in_log:
        differ(f"settled trades: store has {trades_in_store}, the log {trades_in_log}")
    fills_in_store = _compare_fills(store, fills, differ)
    depth_symbols = depth_levels = 0
    depth_unchecked: list[str] = []
    if outputs is not None:
        depth_symbols, depth_levels, depth_unchecked = _compare_depth(store, outputs, book_levels, differ)
    checkpoint = store.checkpoint(stream)
    checkpoint_seq = checkpoint.seq if checkpoint else 0
    if checkpoint_seq != state.seq:
        differ(f"checkpoint of {stream}: seq {checkpoint_seq}, the log ends at seq {state.seq}")
    for fault in store.faults(open_only=True):
        differ(f"open fault in {fault.stream}: {fault.kind} at seq {fault.expected}: {fault.detail}")
    return VerifyReport(
        ok=total == 0,
        differences=differences,
        differences_total=total,
        balances_checked=checked,
        trades_in_log=trades_in_log,
        trades_in_store=trades_in_store,
        final_seq=state.seq,
        checkpoint_seq=checkpoint_seq,
        fills_in_log=len(fills),
        fills_in_store=fills_in_store,
        depth_symbols_checked=depth_symbols,
        depth_levels_checked=depth_levels,
        depth_symbols_unchecked=depth_unchecked,
    )


def _compare_fills(
    store: Store, expected: dict[tuple[int, int], tuple[Any, ...]], differ: Any
) -> int:
    """Compare ``order_fills`` with the fills the log implies; return the rows stored."""
    stored = 0
    seen: set[tuple[int, int]] = set()
    for row in store.scan("order_fills"):
        stored += 1
        key = (row["order_id"], row["trade_id"])
        seen.add(key)
        got = tuple(row[c] for c in _FILL_COLUMNS)
        want = expected.get(key)
        if want is None:
            differ(f"fill of order {key[0]} in trade {key[1]}: in the store, not in the log")
        elif got != want:
            differ(f"fill of order {key[0]} in trade {key[1]}: store {got} != log {want} ({', '.join(_FILL_COLUMNS)})")
    for order_id, trade_id in sorted(set(expected) - seen):
        differ(f"fill of order {order_id} in trade {trade_id}: in the log, missing from the store")
    return stored


def _compare_depth(
    store: Store, outputs: Mapping[str, Log], book_levels: BookLevels | None, differ: Any
) -> tuple[int, int, list[str]]:
    """Compare ``depth_levels`` with each symbol's book rebuilt from its outputs, and each
    engine stream's checkpoint with its log; return the symbols and levels compared, and
    the symbols with levels in the store whose engine log was not given."""
    stored: dict[str, dict[tuple[int, int], tuple[int, int]]] = {}
    for row in store.scan("depth_levels"):
        side, price = row["side"], row["price"]
        if row["rank"] != depth_rank(side, price):
            differ(f"depth of {row['symbol']}: level side {side} price {price} has rank {row['rank']}")
        stored.setdefault(row["symbol"], {})[(side, price)] = (row["qty"], row["orders"])
    levels_checked = 0
    for symbol in sorted(outputs):
        name = layout.output_stream(symbol)
        try:
            assert book_levels is not None  # verify_store refuses outputs without it
            expected, last_seq = book_levels(symbol, outputs[symbol])
        except ValueError as error:
            differ(f"{name} does not replay into a book: {error}")
            continue
        got = stored.get(symbol, {})
        for key in sorted(set(expected) | set(got)):
            levels_checked += 1
            if got.get(key) != expected.get(key):
                differ(
                    f"depth of {symbol} side {key[0]} price {key[1]}: store {got.get(key)} != "
                    f"replay {expected.get(key)} (lots, orders)"
                )
        checkpoint = store.checkpoint(name)
        checkpoint_seq = checkpoint.seq if checkpoint else 0
        if checkpoint_seq != last_seq:
            differ(f"checkpoint of {name}: seq {checkpoint_seq}, the log ends at seq {last_seq}")
    return len(outputs), levels_checked, sorted(set(stored) - set(outputs))
