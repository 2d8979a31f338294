"""Compare a projection with a fresh replay of the log it was projected from.

``verify_store`` replays balance.events into a new UBSCore (which re-checks every event)
and compares, exactly: every user's balance of every asset, the number of settled
trades, the per-asset totals, and the stream's checkpoint. Open faults count as
differences too. Every difference is listed; none is summarized away.
"""

from __future__ import annotations

import msgspec

from ledger.logs import layout
from ledger.logs.base import Log, scan
from ledger.protocol.codec import EVENTS
from ledger.protocol.events import TradeSettled
from ledger.rebuild import replay
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


def verify_store(store: Store, events: Log, stream: str = layout.EVENTS) -> VerifyReport:
    """Replay ``events`` and compare the projection in ``store`` with it."""
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
    for batch in scan(events):
        for raw in batch.values:
            # The tag is the first element of the array; decoding everything again is
            # simpler than peeking and costs only the audit's time.
            if type(EVENTS.decode(raw)) is TradeSettled:
                trades_in_log += 1

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
    )
