"""An event-sourced exchange ledger: sequenced immutable events, the UBSCore balance
reducer, and logs (in-memory, file, Kafka) it is replayed from.

>>> from ledger import UBSCore, Asset, ListAsset, Deposit
>>> core = UBSCore()
>>> _ = core.execute(ListAsset(request_id=1, asset=Asset("BTC", 8)), input_offset=0)
>>> core.execute(Deposit(user=1001, request_id=1, asset="BTC", amount=10**8), 1)[0].available
100000000
"""

from ledger.codec import COMMANDS, EVENTS, OUTPUTS, DecodeError
from ledger.commands import (
    CancelOrder,
    Command,
    Deposit,
    ListAsset,
    ListSymbol,
    OrderType,
    PlaceOrder,
    SelfTrade,
    Side,
    TimeInForce,
    Withdraw,
)
from ledger.events import (
    SCHEMA_VERSION,
    AssetListed,
    BalanceEvent,
    CancelRequested,
    Deposited,
    FundsUnlocked,
    OrderAccepted,
    Rejected,
    SymbolListed,
    TradeSettled,
    Withdrawn,
)
from ledger.filelog import FileLog, FsyncPolicy
from ledger.limits import AMOUNT_MAX, FEE_ACCOUNT_USER
from ledger.log import CorruptRecordError, Log, LogError, MemoryLog, ReadBatch
from ledger.market import Asset, DefinitionError, Market, Symbol
from ledger.reasons import Reason
from ledger.replay import ReplaySummary, replay, replay_summary
from ledger.ubscore import (
    InvariantError,
    LedgerError,
    SequenceError,
    SnapshotError,
    State,
    UBSCore,
    decide,
    evolve,
    restore,
    snapshot,
    state_hash,
)

__all__ = [
    "AMOUNT_MAX",
    "COMMANDS",
    "EVENTS",
    "FEE_ACCOUNT_USER",
    "OUTPUTS",
    "SCHEMA_VERSION",
    "Asset",
    "AssetListed",
    "BalanceEvent",
    "CancelOrder",
    "CancelRequested",
    "Command",
    "CorruptRecordError",
    "DecodeError",
    "DefinitionError",
    "Deposit",
    "Deposited",
    "FileLog",
    "FsyncPolicy",
    "FundsUnlocked",
    "InvariantError",
    "LedgerError",
    "ListAsset",
    "ListSymbol",
    "Log",
    "LogError",
    "Market",
    "MemoryLog",
    "OrderAccepted",
    "OrderType",
    "PlaceOrder",
    "ReadBatch",
    "Reason",
    "Rejected",
    "ReplaySummary",
    "SelfTrade",
    "SequenceError",
    "Side",
    "SnapshotError",
    "State",
    "Symbol",
    "SymbolListed",
    "TimeInForce",
    "TradeSettled",
    "UBSCore",
    "Withdraw",
    "Withdrawn",
    "decide",
    "evolve",
    "replay",
    "replay_summary",
    "restore",
    "snapshot",
    "state_hash",
]
