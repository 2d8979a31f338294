"""The one numbered list of outcomes. Every command ends in exactly one of these.

The numbers are part of the wire format: never renumber, only append.
"""

from __future__ import annotations

from enum import IntEnum


class Reason(IntEnum):
    """Why a command was rejected (OK is the outcome of an accepted command)."""

    OK = 0
    INSUFFICIENT_FUNDS = 1
    DUPLICATE_REQUEST = 2
    REQUEST_ID_CONFLICT = 3
    UNKNOWN_ASSET = 4
    UNKNOWN_SYMBOL = 5
    INVALID_AMOUNT = 6
    INVALID_PRICE = 7
    INVALID_QUANTITY = 8
    UNKNOWN_ORDER = 9
    NOT_ORDER_OWNER = 10
    INVALID_USER = 11
    INVALID_REQUEST_ID = 12
    INVALID_ORDER_TYPE = 13
    ASSET_EXISTS = 14
    SYMBOL_EXISTS = 15
    INVALID_DEFINITION = 16
    WRONG_SHARD = 17
    BALANCE_OVERFLOW = 18
    CANCEL_PENDING = 19
    # Outcomes decided by the matching engine (carried in its OrderCancelled,
    # OrderExpired and OrderRejected outputs).
    CANCELLED_BY_USER = 20
    SELF_TRADE_PREVENTED = 21
    POST_ONLY_WOULD_TAKE = 22
    FOK_NOT_FILLABLE = 23
    NO_LIQUIDITY = 24
    IOC_REMAINDER = 25
    DUPLICATE_ORDER_ID = 26
    BUDGET_EXHAUSTED = 27
    # A record of balance.operations that is not a command of the schema (it does not
    # decode, or it is over COMMAND_BYTES_MAX): answered without quoting it.
    MALFORMED_COMMAND = 28
