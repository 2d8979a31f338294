"""Client order ids: a cancel may name its order by the placing command's (user,
request_id), for every open order whatever the request window remembers; the map behind
it is part of the replayed, hashed and snapshotted state and holds exactly the open
orders."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given

from ledger import EVENTS, MemoryLog, UBSCore
from ledger.app.exchange import verify
from ledger.protocol.codec import COMMANDS
from ledger.protocol.commands import CancelOrder, Deposit, PlaceOrder, Side
from ledger.protocol.events import CancelRequested, FundsUnlocked, OrderAccepted, Rejected, TradeSettled
from ledger.protocol.reasons import Reason
from ledger.rebuild import replay
from ledger.strategies import command_streams
from ledger.ubscore import InvariantError, SnapshotError, State, fingerprint, without_sequence
from ledger.ubscore.evolution import evolve
from ledger.ubscore.state import O_REQUEST_KEY
from support import BTC, USDT, assert_conserved, new_exchange, run_exchange, seeded_commands


def _funded(exchange) -> None:
    exchange.submit(
        [
            Deposit(1001, 1, "BTC", BTC),
            Deposit(1001, 2, "USDT", 100_000 * USDT),
            Deposit(1002, 1, "BTC", BTC),
            Deposit(1002, 2, "USDT", 100_000 * USDT),
        ]
    )


def test_a_cancel_by_request_id_cancels_the_open_order_and_releases_its_lock() -> None:
    exchange, outputs = new_exchange()
    _funded(exchange)
    (placed,) = exchange.submit([PlaceOrder(1001, 10, "BTC-USDT", Side.BUY, qty=2, price=30_000)])
    state = exchange.core.state
    assert state.order_ids_by_request == {(1001 << 64) | 10: placed.order_id}
    assert state.balance(1001, "USDT") == (100_000 * USDT - placed.lock_amount, placed.lock_amount)
    requested, unlocked = exchange.submit([CancelOrder(1001, 11, 0, order_request_id=10)])
    assert type(requested) is CancelRequested
    assert (requested.order_id, requested.by_request, requested.order_request_id) == (placed.order_id, True, 10)
    assert type(unlocked) is FundsUnlocked and unlocked.order_id == placed.order_id
    assert state.balance(1001, "USDT") == (100_000 * USDT, 0)
    assert state.orders == {} and state.order_ids_by_request == {}
    assert_conserved(exchange.core)
    assert verify(exchange.events, outputs, exchange.state_hashes()).ok


def test_a_cancel_by_request_id_of_a_filled_order_is_unknown() -> None:
    exchange, _ = new_exchange()
    _funded(exchange)
    (sell,) = exchange.submit([PlaceOrder(1001, 10, "BTC-USDT", Side.SELL, qty=1, price=30_000)])
    events = exchange.submit([PlaceOrder(1002, 10, "BTC-USDT", Side.BUY, qty=1, price=30_000)])
    assert [type(e) for e in events] == [OrderAccepted, TradeSettled]
    state = exchange.core.state
    assert state.orders == {} and state.order_ids_by_request == {}
    for user in (1001, 1002):
        (answer,) = exchange.submit([CancelOrder(user, 11, 0, order_request_id=10)])
        assert type(answer) is Rejected and answer.reason == Reason.UNKNOWN_ORDER
    # By id the filled order is just as unknown: both names agree.
    (by_id,) = exchange.submit([CancelOrder(1001, 12, sell.order_id)])
    assert type(by_id) is Rejected and by_id.reason == Reason.UNKNOWN_ORDER
    assert_conserved(exchange.core)


def test_a_cancel_by_request_id_of_an_unknown_or_rejected_request_is_unknown() -> None:
    exchange, _ = new_exchange()
    _funded(exchange)
    (refused,) = exchange.submit([PlaceOrder(1001, 10, "BTC-USDT", Side.BUY, qty=10**6, price=10**6)])
    assert type(refused) is Rejected and refused.reason == Reason.INSUFFICIENT_FUNDS
    (deposit,) = exchange.submit([Deposit(1001, 20, "BTC", 5)])
    before = without_sequence(exchange.core.state, keep_requests=False)
    for order_request_id in (10, 20, 99, -1):
        (answer,) = exchange.submit([CancelOrder(1001, 100 + order_request_id, 0, order_request_id=order_request_id)])
        assert type(answer) is Rejected and answer.reason == Reason.UNKNOWN_ORDER, order_request_id
    assert without_sequence(exchange.core.state, keep_requests=False) == before


def test_another_users_request_id_names_none_of_their_orders() -> None:
    exchange, _ = new_exchange()
    _funded(exchange)
    (placed,) = exchange.submit([PlaceOrder(1001, 10, "BTC-USDT", Side.BUY, qty=2, price=30_000)])
    (answer,) = exchange.submit([CancelOrder(1002, 11, 0, order_request_id=10)])
    # Not NOT_ORDER_OWNER: the key is (user, request_id), so 1002 has no request 10.
    assert type(answer) is Rejected and answer.reason == Reason.UNKNOWN_ORDER
    state = exchange.core.state
    assert placed.order_id in state.orders and state.order_ids_by_request == {(1001 << 64) | 10: placed.order_id}


def test_a_cancel_naming_both_an_id_and_a_request_names_no_order() -> None:
    exchange, _ = new_exchange()
    _funded(exchange)
    (placed,) = exchange.submit([PlaceOrder(1001, 10, "BTC-USDT", Side.BUY, qty=2, price=30_000)])
    (answer,) = exchange.submit([CancelOrder(1001, 11, placed.order_id, order_request_id=10)])
    assert type(answer) is Rejected and answer.reason == Reason.UNKNOWN_ORDER
    assert placed.order_id in exchange.core.state.orders


def _core_with_open_order(window: int) -> tuple[UBSCore, OrderAccepted, int]:
    from ledger.strategies import listing_commands

    core = UBSCore(State(request_window=window))
    offset = 0
    for command in listing_commands():
        core.execute(command, offset)
        offset += 1
    core.execute(Deposit(7, 1, "USDT", 10**12), offset)
    (placed,) = core.execute(PlaceOrder(7, 2, "BTC-USDT", Side.BUY, qty=3, price=100), offset + 1)
    assert type(placed) is OrderAccepted
    return core, placed, offset + 2


def test_an_order_older_than_the_request_window_is_still_named_by_its_request() -> None:
    core, placed, offset = _core_with_open_order(window=2)
    for i in range(5):  # push the placing request out of the window
        core.execute(Deposit(7, 100 + i, "USDT", 1), offset + i)
    assert all((key & (2**64 - 1)) != 2 for key in core.state.requests)
    # A retry of the place is not a second order: the request still names the open one.
    (retry,) = core.execute(PlaceOrder(7, 2, "BTC-USDT", Side.BUY, qty=3, price=100), offset + 5)
    assert type(retry) is Rejected
    assert (retry.reason, retry.original_seq, retry.original_reason) == (Reason.DUPLICATE_REQUEST, placed.seq, 0)
    assert list(core.state.orders) == [placed.order_id]
    (requested,) = core.execute(CancelOrder(7, 200, 0, order_request_id=2), offset + 6)
    assert type(requested) is CancelRequested and requested.order_id == placed.order_id


def test_a_retried_cancel_by_request_is_a_duplicate_and_its_fingerprint_is_the_commands() -> None:
    core, placed, offset = _core_with_open_order(window=100)
    cancel = CancelOrder(7, 3, 0, order_request_id=2)
    (requested,) = core.execute(cancel, offset)
    assert fingerprint(requested) == fingerprint(cancel)
    (retry,) = core.execute(CancelOrder(7, 3, 0, ts_ms=5, order_request_id=2), offset + 1)
    assert (retry.reason, retry.original_seq) == (Reason.DUPLICATE_REQUEST, requested.seq)
    # The same request id naming the order by its id is another request: a conflict.
    (conflict,) = core.execute(CancelOrder(7, 3, placed.order_id), offset + 2)
    assert conflict.reason == Reason.REQUEST_ID_CONFLICT
    # And the pending cancel is pending whichever way a new request names the order.
    for number, command in enumerate((CancelOrder(7, 4, placed.order_id), CancelOrder(7, 5, 0, order_request_id=2))):
        (pending,) = core.execute(command, offset + 3 + number)
        assert pending.reason == Reason.CANCEL_PENDING


def test_replay_refuses_a_cancel_by_request_that_does_not_resolve_to_its_order() -> None:
    core, placed, offset = _core_with_open_order(window=100)
    (requested,) = core.execute(CancelOrder(7, 3, 0, order_request_id=2), offset)
    events = [
        msgspec.structs.replace(requested, order_request_id=9),  # another request
        msgspec.structs.replace(requested, by_request=False),  # by id, but naming a request
    ]
    fresh, _, _ = _core_with_open_order(window=100)
    before = without_sequence(fresh.state)
    for event in events:
        with pytest.raises(InvariantError, match="request"):
            evolve(fresh.state, event)
        assert without_sequence(fresh.state) == before
    evolve(fresh.state, requested)
    assert fresh.state_hash() == core.state_hash()


@given(command_streams(users=3, max_size=80))
def test_the_map_holds_exactly_the_open_orders_and_replays_and_snapshots_alike(commands) -> None:
    core, events = run_exchange(commands)
    assert_conserved(core)  # the map is exactly the open orders (tests/support.py)
    log = MemoryLog()
    log.append([EVENTS.encode(e) for e in events])
    replayed = replay(log)
    assert replayed.state.order_ids_by_request == core.state.order_ids_by_request
    assert replayed.state_hash() == core.state_hash()
    restored = UBSCore.from_snapshot(core.snapshot())
    assert restored.state.order_ids_by_request == core.state.order_ids_by_request
    assert restored.state.orders == core.state.orders


def test_the_map_is_bounded_by_the_open_orders_at_every_step() -> None:
    commands = seeded_commands(seed=11, count=3_000)
    core, events = run_exchange(commands)
    assert any(type(e) is CancelRequested and e.by_request for e in events)
    assert any(type(e) is Rejected and type(e.command) is CancelOrder and e.command.order_id == 0 for e in events)
    open_requests = sorted(core.state.order_ids_by_request)
    assert len(open_requests) > 100
    # Cancel every order still open by its client order id: afterwards nothing is left.
    request_id = 10**12
    for key in open_requests:
        request_id += 1
        commands.append(CancelOrder(key >> 64, request_id, 0, order_request_id=key & (2**64 - 1)))
    core, events = run_exchange(commands)
    assert core.state.orders == {} and core.state.order_ids_by_request == {}
    replaying = UBSCore()
    for event in events:
        replaying.apply(event)
        assert len(replaying.state.order_ids_by_request) == len(replaying.state.orders)
    assert replaying.state_hash() == core.state_hash()
    assert_conserved(replaying)


def test_the_hash_covers_the_map() -> None:
    core, placed, _ = _core_with_open_order(window=100)
    body = json.loads(core.snapshot())
    body["state"]["order_ids_by_request"][0][0] += 1  # the order named by another request
    with pytest.raises(SnapshotError, match="malformed"):
        UBSCore.from_snapshot(json.dumps(body).encode())
    body = json.loads(core.snapshot())
    body["state"]["order_ids_by_request"] = []
    with pytest.raises(SnapshotError, match="malformed"):
        UBSCore.from_snapshot(json.dumps(body).encode())
    # The map agrees with the orders, but a changed request id changes the hash.
    body = json.loads(core.snapshot())
    body["state"]["orders"][0][1 + O_REQUEST_KEY] += 1  # a row is the id, then the order's slots
    body["state"]["order_ids_by_request"][0][0] += 1
    with pytest.raises(SnapshotError, match="does not match its recorded hash"):
        UBSCore.from_snapshot(json.dumps(body).encode())


def test_a_snapshot_before_client_order_ids_is_refused_clearly() -> None:
    core, _, _ = _core_with_open_order(window=100)
    body = json.loads(core.snapshot())
    body["schema"] = 2
    with pytest.raises(SnapshotError, match="schema 2 is older than 4.*rebuild the state from the log"):
        UBSCore.from_snapshot(json.dumps(body).encode())


def test_records_written_before_client_order_ids_decode_as_cancels_by_id() -> None:
    old_cancel = msgspec.msgpack.encode(["CancelOrder", 7, 3, 42, 1_700])
    assert COMMANDS.decode(old_cancel) == CancelOrder(7, 3, 42, 1_700, order_request_id=0)
    old_requested = msgspec.msgpack.encode(["CancelRequested", 9, 4, 7, 3, 42, "BTC-USDT", 1_700])
    event = EVENTS.decode(old_requested)
    assert event == CancelRequested(9, 4, 7, 3, 42, "BTC-USDT", 1_700, 0, False)
    assert fingerprint(event) == fingerprint(COMMANDS.decode(old_cancel))
