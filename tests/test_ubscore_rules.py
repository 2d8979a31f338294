"""One definition per rule: where UBSCore writes a rule out for speed, the copy agrees
with the helper, and where a command and its acceptance share a rule, they share it."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.protocol.commands import CancelOrder, Deposit, ListAsset, ListSymbol, PlaceOrder, Side, Withdraw
from ledger.protocol.limits import REQUEST_ID_MAX, USER_ID_MAX
from ledger.protocol.market import Asset, Symbol
from ledger.protocol.reasons import Reason
from ledger.ubscore import SnapshotError, UBSCore, fingerprint, restore, snapshot
from ledger.ubscore.state import outcome, request_key


def _listed() -> UBSCore:
    core = UBSCore()
    core.execute(ListAsset(1, Asset("BTC", 8)), 0)
    core.execute(ListAsset(2, Asset("USDT", 6)), 1)
    btc_usdt = Symbol("BTC-USDT", "BTC", "USDT", lot=10**5, tick=10, maker_fee_ppm=0, taker_fee_ppm=0)
    core.execute(ListSymbol(3, btc_usdt), 2)
    return core


@given(
    user=st.one_of(st.integers(1, USER_ID_MAX), st.sampled_from([1, USER_ID_MAX])),
    request_id=st.one_of(st.integers(0, REQUEST_ID_MAX), st.sampled_from([0, REQUEST_ID_MAX])),
)
def test_the_request_key_written_out_in_remember_and_decide_is_request_key(user: int, request_id: int) -> None:
    core = _listed()
    deposit = Deposit(user, request_id, "USDT", 10**6)
    (accepted,) = core.execute(deposit, 3)
    # remember's copy stored the entry under the helper's key...
    assert outcome(core.state.requests[request_key(user, request_id)])[1] == accepted.seq
    # ...and decide's copy finds it there.
    (retry,) = core.execute(deposit, 4)
    assert (retry.reason, retry.original_seq) == (Reason.DUPLICATE_REQUEST, accepted.seq)


def test_a_command_and_its_acceptance_have_one_fingerprint() -> None:
    core = _listed()
    commands = [
        Deposit(7, 1, "USDT", 10**9),
        Deposit(7, 2, "BTC", 10**8),
        Withdraw(7, 3, "USDT", 10**6),
        PlaceOrder(7, 4, "BTC-USDT", Side.BUY, qty=3, price=1_000),
        PlaceOrder(7, 5, "BTC-USDT", Side.SELL, qty=2, price=9_000),
        ListAsset(6, Asset("ETH", 18)),
        ListSymbol(7, Symbol("ETH-USDT", "ETH", "USDT", lot=10**15, tick=10, maker_fee_ppm=0, taker_fee_ppm=0)),
    ]
    for offset, command in enumerate(commands, start=3):
        (event,) = core.execute(command, offset)
        assert type(event).__name__ != "Rejected", event
        assert fingerprint(event) == fingerprint(command)
    cancel = CancelOrder(7, 8, min(core.state.orders))
    (requested,) = core.execute(cancel, 20)
    assert fingerprint(requested) == fingerprint(cancel)


def test_listing_an_asset_widens_every_account_and_keeps_the_hash_rule() -> None:
    core = _listed()
    core.execute(Deposit(7, 1, "USDT", 10**6), 3)
    core.execute(ListAsset(9, Asset("ETH", 18)), 4)
    assert all(len(account) == core.state.width == 6 for account in core.state.accounts.values())
    assert core.state.balance(7, "ETH") == (0, 0)
    assert restore(snapshot(core.state)).accounts == core.state.accounts


def test_restore_refuses_a_snapshot_with_a_narrow_account() -> None:
    core = _listed()
    core.execute(Deposit(7, 1, "USDT", 10**6), 3)
    raw = msgspec.json.decode(snapshot(core.state))
    raw["state"]["accounts"][0][1] = raw["state"]["accounts"][0][1][:2]
    with pytest.raises(SnapshotError, match="wide"):
        restore(msgspec.json.encode(raw))


def test_evolve_dispatches_every_balance_event_type_to_its_own_handler() -> None:
    from ledger.protocol.events import BALANCE_EVENT_TYPES
    from ledger.ubscore.evolution import _EVOLVE

    assert set(_EVOLVE) == set(BALANCE_EVENT_TYPES)
    assert len(set(_EVOLVE.values())) == len(_EVOLVE)


def test_a_replayed_core_skips_outputs_its_events_already_settled() -> None:
    """The engine position after a replay is what the events record: an output settled
    before the restart is not settled again, and the next one is."""
    from ledger.logs.base import MemoryLog
    from ledger.protocol.codec import EVENTS
    from ledger.protocol.outputs import Trade
    from ledger.rebuild import replay

    core = UBSCore()
    listing = [ListAsset(1, Asset("BTC", 8)), ListAsset(2, Asset("USDT", 6)),
               ListSymbol(3, Symbol("BTC-USDT", "BTC", "USDT", lot=10**5, tick=10, maker_fee_ppm=0, taker_fee_ppm=0))]
    commands = [*listing, Deposit(1, 1, "USDT", 10**9), Deposit(2, 1, "BTC", 10**8),
                PlaceOrder(1, 2, "BTC-USDT", Side.BUY, qty=2, price=100),
                PlaceOrder(2, 2, "BTC-USDT", Side.SELL, qty=2, price=100)]
    events = [e for offset, command in enumerate(commands) for e in core.execute(command, offset)]
    buy, sell = sorted(core.state.orders)
    trade = Trade(1, "BTC-USDT", 7, 1, 100, 1, Side.BUY, 1, buy, 2, sell, 100, False, False)
    events += core.settle(trade)
    log = MemoryLog()
    log.append([EVENTS.encode(e) for e in events])
    rebuilt = replay(log)
    assert rebuilt.state_hash() == core.state_hash()
    assert rebuilt.settle(trade) == []
    assert rebuilt.settle(msgspec.structs.replace(trade, seq=2, trade_id=2))


def test_decide_dispatches_every_command_and_output_type() -> None:
    from ledger.protocol.commands import COMMAND_TYPES
    from ledger.protocol.outputs import ENGINE_OUTPUT_TYPES
    from ledger.ubscore.decision import _DECIDE_COMMAND, _DECIDE_OUTPUT

    assert set(_DECIDE_COMMAND) == set(COMMAND_TYPES)
    assert set(_DECIDE_OUTPUT) == set(ENGINE_OUTPUT_TYPES)
    assert len(set(_DECIDE_OUTPUT.values())) == len(_DECIDE_OUTPUT)


def test_the_type_tuples_name_exactly_the_members_of_their_unions() -> None:
    from typing import get_args

    from ledger.protocol.commands import COMMAND_TYPES, Command
    from ledger.protocol.events import BALANCE_EVENT_TYPES, BalanceEvent
    from ledger.protocol.outputs import ENGINE_OUTPUT_TYPES, EngineOutput

    assert set(COMMAND_TYPES) == set(get_args(Command))
    assert set(BALANCE_EVENT_TYPES) == set(get_args(BalanceEvent))
    assert set(ENGINE_OUTPUT_TYPES) == set(get_args(EngineOutput))
