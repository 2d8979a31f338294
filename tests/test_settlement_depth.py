"""The projected depth and order fills: the depth equals the matching engine's own book
after the same commands (differential), whatever the batch size, restarts (from a saved
fold state or from offset 0) and re-applied writes; an order's fills add up to what it
filled; verify catches a wrong level or a missing fill; Cassandra holds the same rows as
SQLite."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import OUTPUTS, MemoryLog
from ledger.app.books import book_levels as rebuilt_levels
from ledger.protocol.codec import CommandError, checked_command
from ledger.protocol.commands import Command, OrderType, PlaceOrder, SelfTrade, Side, TimeInForce
from ledger.protocol.outputs import Trade
from ledger.strategies import command_streams
from matching.book import OrderBook
from settlement import Projector, Queries, dump, verify_store
from settlement.model import STATE_FORMAT, DepthLevelDelete, DepthLevelRow, Projection, Row, depth_rank
from settlement.projector import BALANCE, ENGINE, Source
from settlement.sqlite import SQLiteStore
from settlement.store import DEPTH_LEVELS_MAX, Checkpoint
from support import CASSANDRA_PORT, in_process, new_exchange, records, run_workload

DEPTH_TABLES = ("depth_levels", "order_fills", "order_fill_buckets")


def sources(events: Any, outputs: dict[str, Any]) -> list[Source]:
    found = [Source("balance.events", events, BALANCE)]
    for symbol in sorted(outputs):
        found.append(Source(f"engine.outputs/{symbol}", outputs[symbol], ENGINE, symbol))
    return found


def prefix(log: MemoryLog, count: int) -> MemoryLog:
    cut = MemoryLog(log.name)
    values = records(log)[:count]
    if values:
        cut.append(values)
    return cut


def book_levels(book: OrderBook) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """(price, lots, orders) per level of the engine's own book, best first."""
    sides = []
    for side in (0, 1):
        levels = book.levels[side]
        prices = sorted(levels, reverse=side == 0)
        sides.append([(p, sum(o.remaining for o in levels[p].values()), len(levels[p])) for p in prices])
    return sides[0], sides[1]


def as_levels(rows: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    return [(r["price"], r["qty"], r["orders"]) for r in rows]


def valid(commands: list[Command]) -> list[Command]:
    """The commands that pass the schema (the exchange refuses a batch holding another)."""
    kept = []
    for command in commands:
        try:
            checked_command(command)
        except CommandError:
            continue
        kept.append(command)
    return kept


def filled_by_trades(outputs: dict[str, MemoryLog]) -> dict[int, int]:
    """Lots each order traded, from the engines' Trade outputs (not from the projection)."""
    filled: dict[int, int] = {}
    for log in outputs.values():
        for raw in records(log):
            output = OUTPUTS.decode(raw)
            if isinstance(output, Trade):
                for order_id in (output.maker_order_id, output.taker_order_id):
                    filled[order_id] = filled.get(order_id, 0) + output.qty
    return filled


def assert_depth_is_the_books(store: Any, exchange: Any) -> int:
    """Every projected level equals the live engine's book; returns the levels compared."""
    q = Queries(store)
    compared = 0
    for symbol, engine in sorted(exchange.engines.items()):
        bids, asks = book_levels(engine.book)
        depth = q.depth(symbol, DEPTH_LEVELS_MAX)
        assert as_levels(depth["bids"]) == bids[:DEPTH_LEVELS_MAX]
        assert as_levels(depth["asks"]) == asks[:DEPTH_LEVELS_MAX]
        assert depth["engine_seq"] == engine.seq
        stored = sorted(
            (r["side"], r["price"], r["qty"], r["orders"], r["rank"]) for r in store.scan("depth_levels")
            if r["symbol"] == symbol
        )
        expected = sorted(
            [(0, p, lots, n, p) for p, lots, n in bids] + [(1, p, lots, n, -p) for p, lots, n in asks]
        )
        assert stored == expected
        compared += len(expected)
    return compared


def assert_fills_add_up(store: Any, outputs: dict[str, MemoryLog]) -> None:
    q = Queries(store)
    traded = filled_by_trades(outputs)
    orders = list(store.scan("orders"))
    for order in orders:
        fills = q.order_fills(order["order_id"], limit=1_000)
        trade_ids = [f["trade_id"] for f in fills]
        assert trade_ids == sorted(trade_ids, reverse=True) and len(set(trade_ids)) == len(trade_ids)
        assert sum(f["qty"] for f in fills) == order["filled_qty"] == traded.get(order["order_id"], 0)
        assert all(f["symbol"] == order["symbol"] and f["user"] == order["user"] for f in fills)
        assert all(f["side"] == order["side"] for f in fills)
    # Every trade has exactly one maker fill and one taker fill.
    makers: dict[tuple[str, int], list[bool]] = {}
    for row in store.scan("order_fills"):
        makers.setdefault((row["symbol"], row["trade_id"]), []).append(row["maker"])
    assert all(sorted(flags) == [False, True] for flags in makers.values())


# -- differential: the projection against the real engine ---------------------------------


@settings(max_examples=80)
@given(command_streams(users=3, max_size=150), st.integers(1, 40))
def test_projected_depth_and_fills_equal_the_engines_book_after_the_same_commands(
    commands: list[Command], batch_events: int
) -> None:
    exchange, outputs = in_process(valid(commands), batch=17)
    store = SQLiteStore(":memory:")
    assert Projector(store, sources(exchange.events, outputs), batch_events=batch_events).run().ok
    assert_depth_is_the_books(store, exchange)
    assert_fills_add_up(store, outputs)
    assert verify_store(store, exchange.events, outputs=outputs, book_levels=rebuilt_levels).ok


def test_the_demo_workload_projects_the_engines_depth_and_fills() -> None:
    exchange, outputs = run_workload(seed=5, orders=3_000)
    store = SQLiteStore(":memory:")
    assert Projector(store, sources(exchange.events, outputs), batch_events=97).run().ok
    assert assert_depth_is_the_books(store, exchange) > 20, "the workload must leave a book"
    assert len(list(store.scan("order_fills"))) > 500, "the workload must trade"
    assert_fills_add_up(store, outputs)


def test_depth_is_bounded_and_past_the_limit_is_refused() -> None:
    from ledger import Deposit

    exchange, outputs = new_exchange()
    exchange.submit([Deposit(7, 1, "USDT", 10**12), Deposit(8, 2, "BTC", 10**10)])
    exchange.submit([PlaceOrder(7, 10 + i, "BTC-USDT", Side.BUY, qty=1 + i % 3, price=1_000 + i) for i in range(120)])
    exchange.submit([PlaceOrder(8, 500, "BTC-USDT", Side.SELL, qty=4, price=2_000)])
    exchange.submit([PlaceOrder(8, 501, "BTC-USDT", Side.SELL, qty=6, price=2_000)])
    store = SQLiteStore(":memory:")
    assert Projector(store, sources(exchange.events, outputs)).run().ok
    q = Queries(store)
    depth = q.depth("BTC-USDT", DEPTH_LEVELS_MAX)
    assert [level["price"] for level in depth["bids"]] == list(range(1_119, 1_019, -1))
    assert depth["asks"] == [{"price": 2_000, "qty": 10, "orders": 2}]
    assert as_levels(q.depth("BTC-USDT", 3)["bids"]) == [(1_119, 3, 1), (1_118, 2, 1), (1_117, 1, 1)]
    for levels in (0, -1, DEPTH_LEVELS_MAX + 1):
        with pytest.raises(ValueError, match=f"levels {levels} is not in 1..{DEPTH_LEVELS_MAX}"):
            q.depth("BTC-USDT", levels)
    assert q.depth("NOPE-X") == {"engine_seq": 0, "bids": [], "asks": []}


# -- amends: outputs UBSCore cannot cause yet, straight from the book ---------------------

book_commands = st.lists(
    st.tuples(
        st.sampled_from(["place", "place", "place", "cancel", "amend_qty", "amend_price"]),
        st.integers(1, 30),  # order id (small, so commands meet resting orders)
        st.integers(1, 3),  # user
        st.sampled_from(Side),
        st.integers(95, 105),  # price
        st.integers(1, 20),  # qty
        st.sampled_from([TimeInForce.GTC, TimeInForce.GTC, TimeInForce.IOC, TimeInForce.POST_ONLY]),
        st.sampled_from(SelfTrade),
    ),
    max_size=80,
)


@given(book_commands)
def test_the_folded_depth_follows_the_book_through_amends_and_self_trade_cancels(commands: list[Any]) -> None:
    book = OrderBook("X-Y", tick=1)
    projection = Projection()
    writes: list[Row] = []
    for input_seq, (kind, order_id, user, side, price, qty, tif, stp) in enumerate(commands, 1):
        resting = book.orders.get(order_id)
        if kind == "place":
            outputs = book.place(input_seq, order_id, user, side, OrderType.LIMIT, tif, stp, qty, price)
        elif resting is None:
            outputs = book.cancel(input_seq, order_id, user)
        elif kind == "cancel":
            outputs = book.cancel(input_seq, order_id, resting.user)
        elif kind == "amend_qty":
            if resting.remaining == 1:
                continue
            outputs = book.amend_qty(input_seq, order_id, resting.user, 1 + qty % (resting.remaining - 1))
        else:
            outputs = book.amend_price(input_seq, order_id, resting.user, price, stp)
        for output in outputs:
            projection.engine_output(output, writes)
        assert projection.levels("X-Y") == book_levels(book)
    # The rows, applied in order, leave exactly the final levels.
    store = SQLiteStore(":memory:")
    store.commit(writes, Checkpoint("engine.outputs/X-Y", 1, 1))
    bids, asks = book_levels(book)
    assert as_levels(Queries(store).depth("X-Y", DEPTH_LEVELS_MAX)["bids"]) == bids[:DEPTH_LEVELS_MAX]
    assert as_levels(Queries(store).depth("X-Y", DEPTH_LEVELS_MAX)["asks"]) == asks[:DEPTH_LEVELS_MAX]


# -- restarts ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workload() -> tuple[MemoryLog, dict[str, MemoryLog], dict[str, list[tuple[Any, ...]]]]:
    exchange, outputs = run_workload(seed=13, orders=1_500)
    reference = SQLiteStore(":memory:")
    assert Projector(reference, sources(exchange.events, outputs)).run().ok
    return exchange.events, outputs, dump(reference)


@settings(max_examples=25)
@given(st.data())
def test_a_restart_at_any_point_gives_the_rows_of_an_uninterrupted_run(workload: Any, data: st.DataObject) -> None:
    events, outputs, uninterrupted = workload
    state_every = data.draw(st.sampled_from([0, 1, 7, 50, 300]), label="state_every_events")
    batch = data.draw(st.integers(1, 500), label="batch_events")
    store = SQLiteStore(":memory:")
    for _run in range(data.draw(st.integers(1, 3), label="restarts")):
        cut_events = prefix(events, data.draw(st.integers(0, events.end_offset())))
        cut_outputs = {s: prefix(log, data.draw(st.integers(0, log.end_offset()))) for s, log in outputs.items()}
        report = Projector(store, sources(cut_events, cut_outputs), batch_events=batch,
                           state_every_events=state_every).run()
        assert report.ok
    final = Projector(store, sources(events, outputs), batch_events=batch, state_every_events=state_every).run()
    assert final.ok
    restored = sum(s.restored_from_seq for s in final.streams[1:])
    if state_every == 0:
        assert restored == 0  # no saved state: every stream folded from offset 0
    assert dump(store) == uninterrupted


def test_a_restart_from_a_saved_engine_state_rebuilds_the_resting_orders(workload: Any) -> None:
    events, outputs, uninterrupted = workload
    store = SQLiteStore(":memory:")
    half = {s: prefix(log, log.end_offset() // 2) for s, log in outputs.items()}
    assert Projector(store, sources(events, half), batch_events=50, state_every_events=50).run().ok
    saved = {s: store.load_state(f"engine.outputs/{s}") for s in outputs}
    assert all(state is not None and state.seq > 0 for state in saved.values())
    # The saved state holds the resting orders: restored, it has the book's levels.
    for symbol, state in saved.items():
        assert state is not None
        restored = Projection.restore(state.state)
        assert restored.snapshot() == state.state
        folded = Projection()
        for raw in records(outputs[symbol])[: state.seq]:
            folded.engine_output(OUTPUTS.decode(raw), None)
        assert restored.levels(symbol) == folded.levels(symbol) != ([], [])
    report = Projector(store, sources(events, outputs), batch_events=50, state_every_events=50).run()
    assert report.ok and all(s.restored_from_seq > 0 for s in report.streams[1:])
    assert dump(store) == uninterrupted


def test_a_saved_state_of_the_layout_before_depth_is_refused_and_the_stream_folds_from_its_start(
    workload: Any,
) -> None:
    import msgspec

    events, outputs, uninterrupted = workload
    store = SQLiteStore(":memory:")
    half = {s: prefix(log, log.end_offset() // 2) for s, log in outputs.items()}
    assert Projector(store, sources(events, half), state_every_events=1).run().ok
    assert STATE_FORMAT != "projection-state-1"
    for symbol in outputs:
        name = f"engine.outputs/{symbol}"
        saved = store.load_state(name)
        assert saved is not None
        old = msgspec.msgpack.encode(["projection-state-1", [], []])
        checkpoint = store.checkpoint(name)
        assert checkpoint is not None
        store.commit([], checkpoint, old)
    report = Projector(store, sources(events, outputs)).run()
    assert report.ok and all(s.restored_from_seq == 0 for s in report.streams[1:])
    assert dump(store) == uninterrupted


# -- re-applied writes ------------------------------------------------------------------------


def engine_batches(outputs: dict[str, MemoryLog]) -> list[list[Row]]:
    projection = Projection()
    batches = []
    for symbol in sorted(outputs):
        for raw in records(outputs[symbol]):
            writes: list[Row] = []
            projection.engine_output(OUTPUTS.decode(raw), writes)
            batches.append(writes)
    return batches


@settings(max_examples=20)
@given(st.integers(0, 2**32))
def test_reapplying_depth_writes_in_any_order_with_duplicates_converges(workload: Any, seed: int) -> None:
    events, outputs, uninterrupted = workload
    rng = random.Random(seed)
    batches = engine_batches(outputs)
    shuffled = batches + [rng.choice(batches) for _ in range(len(batches) // 3)]
    rng.shuffle(shuffled)
    store = SQLiteStore(":memory:")
    for writes in shuffled:
        store.commit(writes, Checkpoint("s", 1, 1))
    assert dump(store)["depth_levels"] == uninterrupted["depth_levels"]


def level(seq: int, qty: int) -> DepthLevelRow:
    return DepthLevelRow("X-Y", 1, depth_rank(1, 100), 100, qty, 1, seq)


@pytest.fixture(params=["sqlite", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def new_store(request: pytest.FixtureRequest) -> Any:
    made: list[Any] = []

    def make() -> Any:
        if request.param == "sqlite":
            store: Any = SQLiteStore(":memory:")
        else:
            request.getfixturevalue("cassandra_session")
            from settlement.cql import CqlStore

            store = CqlStore(("127.0.0.1",), CASSANDRA_PORT, f"test_{uuid.uuid4().hex[:12]}")
        made.append(store)
        return store

    yield make
    for store in made:
        if hasattr(store, "drop"):
            store.drop()
        store.close()


def test_a_level_that_empties_and_fills_again_survives_its_older_delete(new_store: Any) -> None:
    """Written at 1, emptied at 2, filled again at 3: in any order of arrival the level
    is there with the write of seq 3; without the write of 3 it is gone."""
    import itertools

    writes: list[Row] = [level(1, 5), DepthLevelDelete("X-Y", 1, depth_rank(1, 100), 2), level(3, 7)]
    store = new_store()
    for order in itertools.permutations(writes):
        key = "".join(str(w.engine_seq) for w in order)
        for w in order:
            store.commit([msgspec_replace(w, symbol=f"S{key}")], Checkpoint("s", 1, 1))
        for w in order[:2]:  # the first two again
            store.commit([msgspec_replace(w, symbol=f"S{key}")], Checkpoint("s", 1, 1))
        assert Queries(store).depth(f"S{key}")["asks"] == [{"price": 100, "qty": 7, "orders": 1}], key
    for order in itertools.permutations(writes[:2]):
        key = "".join(str(w.engine_seq) for w in order)
        for w in order:
            store.commit([msgspec_replace(w, symbol=f"T{key}")], Checkpoint("s", 1, 1))
        assert Queries(store).depth(f"T{key}")["asks"] == [], key


def msgspec_replace(row: Any, **changes: Any) -> Any:
    import msgspec

    return msgspec.structs.replace(row, **changes)


# -- verify ---------------------------------------------------------------------------------


def test_verify_compares_the_depth_with_a_replay_and_every_fill_with_the_log(workload: Any) -> None:
    events, outputs, _ = workload
    store = SQLiteStore(":memory:")
    assert Projector(store, sources(events, outputs)).run().ok
    report = verify_store(store, events, outputs=outputs, book_levels=rebuilt_levels)
    assert report.ok, report.differences
    assert report.depth_symbols_checked == len(outputs) and report.depth_levels_checked > 10
    assert report.fills_in_log == report.fills_in_store == 2 * report.trades_in_log > 0
    # A level with another quantity (a newer version, so the store takes it), and a level
    # that should not be there.
    symbol = sorted(outputs)[0]
    row = next(r for r in store.scan("depth_levels") if r["symbol"] == symbol)
    bad = DepthLevelRow(symbol, row["side"], row["rank"], row["price"], row["qty"] + 1, row["orders"], 10**9)
    ghost = DepthLevelRow(symbol, 0, depth_rank(0, 1), 1, 3, 1, 10**9)
    store.commit([bad, ghost], Checkpoint("tamper", 1, 1))
    report = verify_store(store, events, outputs=outputs, book_levels=rebuilt_levels)
    assert report.differences_total == 2
    changed = f"depth of {symbol} side {row['side']} price {row['price']}: store ({row['qty'] + 1}, {row['orders']})"
    assert any(d.startswith(changed) for d in report.differences), report.differences
    assert any(f"depth of {symbol} side 0 price 1: store (3, 1) != replay None" in d for d in report.differences)
    # A fill the log does not have is found too, even without the engine logs.
    from settlement.model import OrderFillRow, bucket_of

    fake = dict(next(iter(store.scan("order_fills"))), trade_id=10**9, bucket=bucket_of(10**9))
    store.commit([OrderFillRow(**fake)], Checkpoint("tamper", 1, 1))
    report = verify_store(store, events)
    assert report.depth_symbols_checked == 0
    assert report.differences == [f"fill of order {fake['order_id']} in trade {10**9}: in the store, not in the log"]


# -- Cassandra ------------------------------------------------------------------------------


@pytest.mark.cassandra
def test_cassandra_holds_the_same_depth_and_fills_as_sqlite(workload: Any, cassandra_session: Any) -> None:
    from settlement.cql import CqlStore

    events, outputs, uninterrupted = workload
    store = CqlStore(("127.0.0.1",), CASSANDRA_PORT, f"test_{uuid.uuid4().hex[:12]}")
    try:
        # Restarted once halfway, from saved states, so the CQL side also folds on.
        half = {s: prefix(log, log.end_offset() // 2) for s, log in outputs.items()}
        assert Projector(store, sources(prefix(events, events.end_offset() // 2), half),
                         state_every_events=100).run().ok
        report = Projector(store, sources(events, outputs), state_every_events=100).run()
        assert report.ok and any(s.restored_from_seq for s in report.streams)
        tables = dump(store)
        for table in DEPTH_TABLES:
            assert tables[table] == uninterrupted[table], table
            assert tables[table], table
        reference = SQLiteStore(":memory:")
        assert Projector(reference, sources(events, outputs)).run().ok
        cql, sqlite = Queries(store), Queries(reference)
        for symbol in sorted(outputs):
            assert cql.depth(symbol, DEPTH_LEVELS_MAX) == sqlite.depth(symbol, DEPTH_LEVELS_MAX)
            assert cql.depth(symbol)["bids"], symbol
        order_ids = sorted({r["order_id"] for r in reference.scan("order_fills")})[:25]
        for order_id in order_ids:
            assert cql.order_fills(order_id) == sqlite.order_fills(order_id) != []
            page = cql.order_fills(order_id, limit=1)
            assert page + cql.order_fills(order_id, before_trade_id=page[-1]["trade_id"]) == cql.order_fills(order_id)
        assert verify_store(store, events, outputs=outputs, book_levels=rebuilt_levels).ok
    finally:
        store.drop()
        store.close()
