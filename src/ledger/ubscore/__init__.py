"""UBSCore, the user balance service core: the single writer of balances.

The reducer in parts, each a module: ``state`` (the state, its errors and the request
window), ``decision`` (``decide``: commands and engine outputs to events),
``evolution`` (``evolve``: events applied to the state), ``trade`` (the trade
arithmetic the two share), ``snapshots`` (the canonical form, hash and snapshots) and
``core`` (``UBSCore``, the front). It imports
only ``ledger.protocol``: no I/O, no clock, and never the matching engine.
"""

from ledger.ubscore.core import UBSCore
from ledger.ubscore.decision import Input, decide, decide_command, decide_output
from ledger.ubscore.evolution import evolve
from ledger.ubscore.snapshots import canonical, restore, snapshot, state_hash, without_sequence
from ledger.ubscore.state import (
    InvariantError,
    LedgerError,
    SequenceError,
    SnapshotError,
    State,
    fingerprint,
)

__all__ = [
    "Input",
    "InvariantError",
    "LedgerError",
    "SequenceError",
    "SnapshotError",
    "State",
    "UBSCore",
    "canonical",
    "decide",
    "decide_command",
    "decide_output",
    "evolve",
    "fingerprint",
    "restore",
    "snapshot",
    "state_hash",
    "without_sequence",
]
