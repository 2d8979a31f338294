"""Conservation and non-negativity: money is never created, destroyed or overdrawn."""

from __future__ import annotations

from hypothesis import given

from ledger.protocol.events import FundsUnlocked, OrderAccepted, TradeSettled
from ledger.strategies import command_streams
from support import assert_conserved, run_exchange, seeded_commands


@given(command_streams(users=3, max_size=150))
def test_random_streams_conserve_every_asset(commands) -> None:
    core, _ = run_exchange(commands)
    assert_conserved(core)


def test_seeded_stream_conserves_and_settles_trades() -> None:
    core, events = run_exchange(seeded_commands(seed=11, count=20_000))
    assert_conserved(core)
    trades = [e for e in events if type(e) is TradeSettled]
    assert len(trades) > 1000
    # The fee account earned something and fees were within the configured rates.
    assert any(value > 0 for value in core.state.accounts[0])
    for trade in trades:
        assert trade.maker_fee * 1_000_000 <= max(trade.base_amount, trade.quote_amount) * 2_000


def test_every_accepted_order_is_released_exactly_once() -> None:
    core, events = run_exchange(seeded_commands(seed=5, count=5_000))
    accepted = {e.order_id: e for e in events if type(e) is OrderAccepted}
    released: dict[int, int] = {}
    for event in events:
        if type(event) is FundsUnlocked:
            released[event.order_id] = released.get(event.order_id, 0) + 1
        elif type(event) is TradeSettled:
            for done, order_id in ((event.maker_done, event.maker_order_id), (event.taker_done, event.taker_order_id)):
                if done and order_id not in core.state.orders:
                    released.setdefault(order_id, 0)
    assert all(count <= 1 for count in released.values())
    # An order is either still open or ended; never both, never neither.
    for order_id in accepted:
        assert (order_id in core.state.orders) != (order_id in released), order_id
