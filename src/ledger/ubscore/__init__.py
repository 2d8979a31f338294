"""UBSCore, the user balance service core: the single writer of balances."""

from ledger.ubscore.core import (
    InvariantError,
    LedgerError,
    SequenceError,
    SnapshotError,
    State,
    UBSCore,
    canonical,
    command_fingerprint,
    decide,
    decide_command,
    decide_output,
    evolve,
    restore,
    snapshot,
    state_hash,
)

__all__ = [
    "InvariantError",
    "LedgerError",
    "SequenceError",
    "SnapshotError",
    "State",
    "UBSCore",
    "canonical",
    "command_fingerprint",
    "decide",
    "decide_command",
    "decide_output",
    "evolve",
    "restore",
    "snapshot",
    "state_hash",
]
