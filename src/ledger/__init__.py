"""An event-sourced exchange ledger: sequenced immutable events, the UBSCore balance
reducer, and logs (in-memory, file, Kafka) it is replayed from.

>>> from ledger import UBSCore, Asset, ListAsset, Deposit
>>> core = UBSCore()
>>> _ = core.execute(ListAsset(request_id=1, asset=Asset("BTC", 8)), input_offset=0)
>>> core.execute(Deposit(user=1001, request_id=1, asset="BTC", amount=10**8), 1)[0].available
100000000
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The library's surface, imported on first use (PEP 562): ``import ledger.protocol`` (or
# ``import matching``) then runs only the layers it needs, never the reducer or the app.
_EXPORTS: dict[str, str] = {
    "CommandError": "ledger.protocol",
    "check_command": "ledger.protocol",
    "scan": "ledger.logs",
    "KafkaLog": "ledger.logs.kafka",
    "OrderRejected": "ledger.protocol",
    "OrderExpired": "ledger.protocol",
    "OrderCancelled": "ledger.protocol",
    "Trade": "ledger.protocol",
    "OrderRested": "ledger.protocol",
    "BookOpened": "ledger.protocol",
    "EngineOutput": "ledger.protocol",
    "CorruptRecordError": "ledger.logs",
    "FileLog": "ledger.logs",
    "FsyncPolicy": "ledger.logs",
    "Log": "ledger.logs",
    "LogError": "ledger.logs",
    "MemoryLog": "ledger.logs",
    "ReadBatch": "ledger.logs",
    "Asset": "ledger.protocol",
    "AssetListed": "ledger.protocol",
    "BalanceEvent": "ledger.protocol",
    "COMMANDS": "ledger.protocol",
    "CancelOrder": "ledger.protocol",
    "CancelRequested": "ledger.protocol",
    "Command": "ledger.protocol",
    "DecodeError": "ledger.protocol",
    "DefinitionError": "ledger.protocol",
    "Deposit": "ledger.protocol",
    "Deposited": "ledger.protocol",
    "EVENTS": "ledger.protocol",
    "FundsUnlocked": "ledger.protocol",
    "ListAsset": "ledger.protocol",
    "ListSymbol": "ledger.protocol",
    "Market": "ledger.protocol",
    "OUTPUTS": "ledger.protocol",
    "OrderAccepted": "ledger.protocol",
    "OrderType": "ledger.protocol",
    "PlaceOrder": "ledger.protocol",
    "Reason": "ledger.protocol",
    "Rejected": "ledger.protocol",
    "SCHEMA_VERSION": "ledger.protocol",
    "SelfTrade": "ledger.protocol",
    "Side": "ledger.protocol",
    "Symbol": "ledger.protocol",
    "SymbolListed": "ledger.protocol",
    "TimeInForce": "ledger.protocol",
    "TradeSettled": "ledger.protocol",
    "Withdraw": "ledger.protocol",
    "Withdrawn": "ledger.protocol",
    "AMOUNT_MAX": "ledger.protocol.limits",
    "FEE_ACCOUNT_USER": "ledger.protocol.limits",
    "ReplaySummary": "ledger.rebuild",
    "replay": "ledger.rebuild",
    "replay_summary": "ledger.rebuild",
    "InvariantError": "ledger.ubscore",
    "LedgerError": "ledger.ubscore",
    "SequenceError": "ledger.ubscore",
    "SnapshotError": "ledger.ubscore",
    "State": "ledger.ubscore",
    "UBSCore": "ledger.ubscore",
    "decide": "ledger.ubscore",
    "evolve": "ledger.ubscore",
    "restore": "ledger.ubscore",
    "snapshot": "ledger.ubscore",
    "state_hash": "ledger.ubscore",
}

if TYPE_CHECKING:
    from ledger.logs import (
        CorruptRecordError,
        FileLog,
        FsyncPolicy,
        Log,
        LogError,
        MemoryLog,
        ReadBatch,
        scan,
    )
    from ledger.logs.kafka import KafkaLog
    from ledger.protocol import (
        COMMANDS,
        EVENTS,
        OUTPUTS,
        SCHEMA_VERSION,
        Asset,
        AssetListed,
        BalanceEvent,
        BookOpened,
        CancelOrder,
        CancelRequested,
        Command,
        CommandError,
        DecodeError,
        DefinitionError,
        Deposit,
        Deposited,
        EngineOutput,
        FundsUnlocked,
        ListAsset,
        ListSymbol,
        Market,
        OrderAccepted,
        OrderCancelled,
        OrderExpired,
        OrderRejected,
        OrderRested,
        OrderType,
        PlaceOrder,
        Reason,
        Rejected,
        SelfTrade,
        Side,
        Symbol,
        SymbolListed,
        TimeInForce,
        Trade,
        TradeSettled,
        Withdraw,
        Withdrawn,
        check_command,
    )
    from ledger.protocol.limits import (
        AMOUNT_MAX,
        FEE_ACCOUNT_USER,
    )
    from ledger.rebuild import (
        ReplaySummary,
        replay,
        replay_summary,
    )
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ledger' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "CommandError",
    "check_command",
    "AMOUNT_MAX",
    "Asset",
    "AssetListed",
    "BalanceEvent",
    "COMMANDS",
    "CancelOrder",
    "CancelRequested",
    "Command",
    "CorruptRecordError",
    "DecodeError",
    "DefinitionError",
    "Deposit",
    "Deposited",
    "EVENTS",
    "EngineOutput",
    "FEE_ACCOUNT_USER",
    "FileLog",
    "FsyncPolicy",
    "FundsUnlocked",
    "InvariantError",
    "KafkaLog",
    "LedgerError",
    "ListAsset",
    "ListSymbol",
    "Log",
    "LogError",
    "Market",
    "MemoryLog",
    "OUTPUTS",
    "OrderAccepted",
    "OrderCancelled",
    "OrderExpired",
    "OrderRejected",
    "OrderRested",
    "BookOpened",
    "OrderType",
    "PlaceOrder",
    "ReadBatch",
    "Reason",
    "Rejected",
    "ReplaySummary",
    "SCHEMA_VERSION",
    "SelfTrade",
    "SequenceError",
    "Side",
    "SnapshotError",
    "State",
    "Symbol",
    "SymbolListed",
    "TimeInForce",
    "Trade",
    "TradeSettled",
    "UBSCore",
    "Withdraw",
    "Withdrawn",
    "decide",
    "evolve",
    "replay",
    "replay_summary",
    "restore",
    "scan",
    "snapshot",
    "state_hash",
]
