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
    # Amends (ReduceOrder, ReplaceOrder). The engine ends an order whose new total it has
    # already filled (OrderCancelled); UBSCore bounds the amends waiting for the engine.
    AMEND_ALREADY_FILLED = 29
    AMENDS_PENDING_MAX = 30


_TEXT: dict[int, str] = {
    Reason.OK: "accepted",
    Reason.INSUFFICIENT_FUNDS: "the available balance does not cover it",
    Reason.DUPLICATE_REQUEST: "a retry of a request already answered",
    Reason.REQUEST_ID_CONFLICT: "this request id was used for a different request",
    Reason.UNKNOWN_ASSET: "no such asset is listed",
    Reason.UNKNOWN_SYMBOL: "no such symbol is listed",
    Reason.INVALID_AMOUNT: "the amount is not a positive amount within the limits",
    Reason.INVALID_PRICE: "the price is not valid for this order type",
    Reason.INVALID_QUANTITY: "the quantity is not valid (or the order's value is beyond the limits)",
    Reason.UNKNOWN_ORDER: "no open order of this account has that id",
    Reason.NOT_ORDER_OWNER: "the order belongs to another account",
    Reason.INVALID_USER: "the user id is not valid",
    Reason.INVALID_REQUEST_ID: "the request id is not valid",
    Reason.INVALID_ORDER_TYPE: "this combination of order type and time in force is not allowed",
    Reason.ASSET_EXISTS: "the asset is already listed",
    Reason.SYMBOL_EXISTS: "the symbol is already listed",
    Reason.INVALID_DEFINITION: "the market definition is not valid",
    Reason.WRONG_SHARD: "the account belongs to another shard",
    Reason.BALANCE_OVERFLOW: "the balance would exceed the largest amount",
    Reason.CANCEL_PENDING: "a cancel of this order is already pending",
    Reason.CANCELLED_BY_USER: "cancelled by its owner",
    Reason.SELF_TRADE_PREVENTED: "it would have traded with an order of the same account",
    Reason.POST_ONLY_WOULD_TAKE: "a post-only order that would have taken liquidity",
    Reason.FOK_NOT_FILLABLE: "a fill-or-kill order the book could not fill whole",
    Reason.NO_LIQUIDITY: "the book had nothing to match",
    Reason.IOC_REMAINDER: "the unfilled rest of an immediate-or-cancel order",
    Reason.DUPLICATE_ORDER_ID: "the book already holds an order with this id",
    Reason.BUDGET_EXHAUSTED: "the market buy's quote budget is spent",
    Reason.MALFORMED_COMMAND: "the record is not a command of the schema",
    Reason.AMEND_ALREADY_FILLED: "the order had already filled the amended total quantity, so it ended",
    Reason.AMENDS_PENDING_MAX: "too many amends of this order are still waiting for the matching engine",
}


def describe(reason: int) -> str:
    """A sentence for a reason code (for people; the code is what programs compare).

    >>> describe(Reason.INSUFFICIENT_FUNDS)
    'the available balance does not cover it'
    """
    return _TEXT.get(reason, f"reason {reason}")
