"""The shared vocabulary: what every part of the exchange says to every other.

Commands (balance.operations), UBSCore's events (balance.events), the matching engine's
outputs (engine.outputs), assets and symbols, the named limits, the numbered reason
codes, and the codec that puts them on the wire. This layer imports nothing else of
ours: the logs, the reducers, settlement and the app all build on it.
"""

from ledger.protocol.codec import COMMANDS, EVENTS, OUTPUTS, Codec, CommandError, DecodeError, check_command
from ledger.protocol.commands import (
    COMMAND_TYPES,
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
from ledger.protocol.events import (
    BALANCE_EVENT_TYPES,
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
from ledger.protocol.market import Asset, DefinitionError, Market, Symbol
from ledger.protocol.outputs import (
    ENGINE_OUTPUT_TYPES,
    BookOpened,
    EngineOutput,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderRested,
    Trade,
)
from ledger.protocol.reasons import Reason

__all__ = [
    "BookOpened",
    "BALANCE_EVENT_TYPES",
    "COMMANDS",
    "COMMAND_TYPES",
    "ENGINE_OUTPUT_TYPES",
    "EVENTS",
    "OUTPUTS",
    "SCHEMA_VERSION",
    "Asset",
    "AssetListed",
    "BalanceEvent",
    "CancelOrder",
    "CancelRequested",
    "Codec",
    "Command",
    "CommandError",
    "DecodeError",
    "DefinitionError",
    "Deposit",
    "Deposited",
    "EngineOutput",
    "FundsUnlocked",
    "ListAsset",
    "ListSymbol",
    "Market",
    "OrderAccepted",
    "OrderCancelled",
    "OrderExpired",
    "OrderRejected",
    "OrderRested",
    "OrderType",
    "PlaceOrder",
    "Reason",
    "Rejected",
    "SelfTrade",
    "Side",
    "Symbol",
    "SymbolListed",
    "TimeInForce",
    "Trade",
    "TradeSettled",
    "Withdraw",
    "Withdrawn",
    "check_command",
]
