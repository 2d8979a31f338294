"""UBSCore's state, its errors, and the request window that answers retries.

State layout (chosen for memory: about 300 bytes a user with three assets):
``accounts[user]`` is a flat list ``[available_0, locked_0, available_1, locked_1, ...]``
indexed by the asset's listing order, always of full width (listing an asset widens
every account); ``orders[order_id]`` is the lock an open order
still holds, a list of the ``O_*`` slots below; ``order_ids_by_request`` names each open
order by its placing request (the client order id), whatever the request window still
remembers.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Union

from ledger.protocol.commands import (
    CancelOrder,
    Command,
    Deposit,
    ListAsset,
    ListSymbol,
    PlaceOrder,
    ReduceOrder,
    ReplaceOrder,
    Withdraw,
)
from ledger.protocol.events import (
    AmendRequested,
    AssetListed,
    CancelRequested,
    Deposited,
    OrderAccepted,
    Rejected,
    SymbolListed,
    Withdrawn,
)
from ledger.protocol.limits import FEE_ACCOUNT_USER, REQUEST_WINDOW_DEFAULT, SHARDS_MAX
from ledger.protocol.market import Asset, Symbol
from ledger.protocol.reasons import Reason


class LedgerError(Exception):
    """Base class of the ledger's errors (not rejections: those are events)."""


class InvariantError(LedgerError):
    """An event or engine output contradicts the state: the log or the engine is wrong.

    Raised instead of applying anything, naming the seq and what did not hold.
    """


class SequenceError(LedgerError):
    """An input arrived out of order: a gap, a reorder or a log that starts late."""


class SnapshotError(LedgerError):
    """A snapshot failed verification (hash, schema version or format)."""


# orders[order_id] slots, by position: a list costs less memory and time than a struct
# for the state's most numerous object. O_REQUEST_KEY is request_key(user, request_id)
# of the placing request: the order's key in order_ids_by_request, kept made so that
# the end of an order removes it without building the (beyond 64 bits) int again.
# Amends: O_PRICE and O_QTY are the price and total quantity the engine last confirmed
# (trades are checked against them), O_FILLED what the settled trades filled, O_TIF the
# time in force, and O_PENDING the amends accepted and not yet answered by the engine,
# oldest first, each a (price, total quantity) pair: the states the order may still take.
(
    O_USER,
    O_SYMBOL,
    O_SIDE,
    O_TYPE,
    O_PRICE,
    O_LOCK_INDEX,
    O_LOCK,
    O_CANCELLING,
    O_REQUEST_KEY,
    O_QTY,
    O_FILLED,
    O_TIF,
    O_PENDING,
) = range(13)
O_SLOTS = 13

# The event that answered a request: its outcome and fingerprint are derived from it
# when a retry arrives or the state is hashed, so remembering a request allocates
# nothing. A state restored from a snapshot holds the derived triple instead.
Acceptance = Union[Deposited, Withdrawn, OrderAccepted, CancelRequested, AmendRequested, AssetListed, SymbolListed]
Outcome = tuple[tuple[Any, ...], int, int]
WindowEntry = Union[Acceptance, Rejected, Outcome]

# Rejections about the request id itself are not remembered: remembering them would let
# a malformed request occupy the id a valid retry needs.
NOT_REMEMBERED = frozenset(
    {
        Reason.DUPLICATE_REQUEST,
        Reason.REQUEST_ID_CONFLICT,
        Reason.INVALID_USER,
        Reason.INVALID_REQUEST_ID,
        Reason.MALFORMED_COMMAND,
    }
)


class SymbolInfo:
    """A listed symbol with the account slots of its two assets."""

    __slots__ = ("symbol", "base_index", "quote_index")

    def __init__(self, symbol: Symbol, base_index: int, quote_index: int) -> None:
        self.symbol = symbol
        self.base_index = base_index
        self.quote_index = quote_index


class State:
    """UBSCore's state: a few plain dicts and lists, owned by one reducer."""

    __slots__ = (
        "seq",
        "shard",
        "request_window",
        "assets",
        "asset_index",
        "symbols",
        "accounts",
        "orders",
        "order_ids_by_request",
        "requests",
        "request_order",
        "deposited",
        "withdrawn",
        "last_input_offset",
        "last_engine_seq",
        "width",
    )

    def __init__(self, shard: int = 0, request_window: int = REQUEST_WINDOW_DEFAULT) -> None:
        if not 0 <= shard < SHARDS_MAX:
            raise ValueError(f"shard {shard} outside 0..{SHARDS_MAX - 1}")
        if request_window < 1:
            raise ValueError(f"request_window {request_window} must be at least 1")
        self.seq = 0
        self.shard = shard
        self.request_window = request_window
        self.assets: list[Asset] = []
        self.asset_index: dict[str, int] = {}
        self.symbols: dict[str, SymbolInfo] = {}
        self.accounts: dict[int, list[int]] = {}
        self.orders: dict[int, list[Any]] = {}
        # request_key(user, request_id) of the PlaceOrder -> order_id, for every open
        # order and nothing else: exactly the O_REQUEST_KEY of each of ``orders``.
        self.order_ids_by_request: dict[int, int] = {}
        # request_key(user, request_id) -> what answered it (see WindowEntry), oldest
        # first in request_order.
        self.requests: dict[int, WindowEntry] = {}
        self.request_order: deque[int] = deque()
        # Per asset index: everything ever deposited and withdrawn (for conservation).
        self.deposited: list[int] = []
        self.withdrawn: list[int] = []
        self.last_input_offset = -1
        self.last_engine_seq: dict[str, int] = {}
        # Length of a full account list: 2 * number of assets.
        self.width = 0

    # -- reads -------------------------------------------------------------------------

    def balance_at(self, user: int, index: int) -> tuple[int, int]:
        """(available, locked) of ``user`` in the asset listed ``index``-th; (0, 0) for a
        user the state has not seen yet."""
        account = self.accounts.get(user)
        if account is None:
            return 0, 0
        return account[2 * index], account[2 * index + 1]

    def new_account(self) -> list[int]:
        """A zero account of full width, not yet in ``accounts``: evolve fills it in
        and stores it only once the event has passed every check."""
        return [0] * self.width

    def balance(self, user: int, asset: str) -> tuple[int, int]:
        """(available, locked) of ``user`` in ``asset``; (0, 0) for an unknown user."""
        return self.balance_at(user, self.asset_index[asset])

    def totals(self) -> dict[str, tuple[int, int]]:
        """Per asset: (sum of available, sum of locked) over all accounts."""
        count = len(self.assets)
        available = [0] * count
        locked = [0] * count
        for account in self.accounts.values():
            for index in range(len(account) // 2):
                available[index] += account[2 * index]
                locked[index] += account[2 * index + 1]
        return {asset.code: (available[i], locked[i]) for i, asset in enumerate(self.assets)}

    def asset_totals(self) -> dict[str, dict[str, int]]:
        """Per asset: the sums of available and locked, and everything deposited and
        withdrawn: the figures a conservation check compares."""
        return {
            code: {
                "available": available,
                "locked": locked,
                "deposited": self.deposited[self.asset_index[code]],
                "withdrawn": self.withdrawn[self.asset_index[code]],
            }
            for code, (available, locked) in self.totals().items()
        }

    def conservation_problems(self) -> list[str]:
        """Assets whose available + locked differs from deposits - withdrawals (exact)."""
        return [
            f"{code}: available {t['available']} + locked {t['locked']} != "
            f"deposited {t['deposited']} - withdrawn {t['withdrawn']}"
            for code, t in self.asset_totals().items()
            if t["available"] + t["locked"] != t["deposited"] - t["withdrawn"]
        ]


# -- the request window: what makes a retry "the same request" -------------------------


def fingerprint(request: Command | Acceptance) -> tuple[Any, ...]:
    """The fields a retry must repeat exactly (not its timestamp), read alike from a
    command or from the event that accepted it."""
    match request:
        case PlaceOrder() | OrderAccepted():
            r = request
            return (2, r.symbol, r.side, r.qty, r.price, r.order_type, r.tif, r.quote_budget, r.stp)
        case CancelOrder():
            return (3, request.order_id, request.order_request_id)
        case CancelRequested():
            # The order as the command named it: by request (order id 0) or by id.
            return (3, 0 if request.by_request else request.order_id, request.order_request_id)
        case ReduceOrder():
            return (6, request.order_id, request.order_request_id, request.qty)
        case ReplaceOrder():
            return (7, request.order_id, request.order_request_id, request.price, request.qty, request.stp)
        case AmendRequested():
            # The amend as the command had it: the order as it named it, and a replace's
            # quantity 0 when it kept the total.
            named = 0 if request.by_request else request.order_id
            if request.keep_priority:
                return (6, named, request.order_request_id, request.qty)
            qty = 0 if request.qty_kept else request.qty
            return (7, named, request.order_request_id, request.price, qty, request.stp)
        case Deposit() | Deposited():
            return (0, request.asset, request.amount)
        case Withdraw() | Withdrawn():
            return (1, request.asset, request.amount)
        case ListAsset() | AssetListed():
            return (4, request.asset.code, request.asset.decimals)
        case ListSymbol() | SymbolListed():
            s = request.symbol
            return (5, s.name, s.base, s.quote, s.lot, s.tick, s.maker_fee_ppm, s.taker_fee_ppm)
    raise TypeError(f"not a command or an acceptance: {type(request).__name__}")


def command_user(command: Command) -> int:
    """The account a command acts for: its user, or for a listing (which names none) the
    fee account."""
    user: int = getattr(command, "user", FEE_ACCOUNT_USER)
    return user


def request_key(user: int, request_id: int) -> int:
    """The request window's key of ``(user, request_id)`` (both below 2**64)."""
    return (user << 64) | request_id


def outcome(entry: WindowEntry) -> Outcome:
    """(fingerprint, seq of the outcome, reason) of a request window entry."""
    if isinstance(entry, tuple):
        return entry
    if isinstance(entry, Rejected):
        assert entry.command is not None, "a malformed command is never remembered"
        return fingerprint(entry.command), entry.seq, entry.reason
    return fingerprint(entry), entry.seq, 0


def remember(state: State, user: int, request_id: int, entry: WindowEntry) -> None:
    """Put ``entry`` in the request window, forgetting the oldest beyond its size."""
    key = (user << 64) | request_id  # request_key, written out: once per accepted command
    state.requests[key] = entry
    order = state.request_order
    order.append(key)
    if len(order) > state.request_window:
        del state.requests[order.popleft()]
