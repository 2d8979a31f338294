"""Assets and symbols: the definitions every amount is measured against.

An amount is an int in the asset's minor units. An order's quantity is whole lots and its
price whole ticks, so a trade of ``qty`` lots at ``price`` ticks moves exactly
``qty * lot`` base minor units and ``qty * price * tick`` quote minor units.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import msgspec

from ledger.protocol.limits import (
    AMOUNT_MAX,
    ASSET_CODE_CHARS_MAX,
    ASSET_DECIMALS_MAX,
    FEE_PPM_MAX,
    SYMBOL_NAME_CHARS_MAX,
)

_NAME = re.compile(r"[A-Z0-9][A-Z0-9_.\-]*\Z")


class DefinitionError(ValueError):
    """A market definition (asset or symbol) is invalid; the message names the field."""


class Asset(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """An asset such as BTC with 8 decimals: amounts are ints in 10**-decimals units."""

    code: str
    decimals: int

    def __post_init__(self) -> None:
        problem = asset_problem(self)
        if problem:
            raise DefinitionError(problem)


class Symbol(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A spot market: ``name`` trades ``base`` against ``quote``.

    ``lot`` is base minor units per lot, ``tick`` quote minor units per lot per price
    step. Fees are parts per million of what the user receives, rounded down.
    """

    name: str
    base: str
    quote: str
    lot: int
    tick: int
    maker_fee_ppm: int = 0
    taker_fee_ppm: int = 0

    def __post_init__(self) -> None:
        problem = symbol_problem(self)
        if problem:
            raise DefinitionError(problem)


def _is_int(value: object) -> bool:
    return type(value) is int


def asset_problem(asset: Asset) -> str:
    """Return what is wrong with ``asset``, or an empty string if it is valid."""
    if type(asset.code) is not str or not _NAME.match(asset.code):
        return f"asset code {asset.code!r} must be upper-case letters, digits, '_', '.', '-'"
    if len(asset.code) > ASSET_CODE_CHARS_MAX:
        return f"asset code {asset.code!r} longer than {ASSET_CODE_CHARS_MAX} characters"
    if not _is_int(asset.decimals) or not 0 <= asset.decimals <= ASSET_DECIMALS_MAX:
        return f"asset {asset.code}: decimals {asset.decimals!r} not an int in 0..{ASSET_DECIMALS_MAX}"
    return ""


def symbol_problem(symbol: Symbol) -> str:
    """Return what is wrong with ``symbol`` on its own (not its assets), or ''."""
    name = symbol.name
    if type(name) is not str or not _NAME.match(name) or len(name) > SYMBOL_NAME_CHARS_MAX:
        return f"symbol name {name!r} must be 1..{SYMBOL_NAME_CHARS_MAX} upper-case characters"
    if symbol.base == symbol.quote:
        return f"symbol {name}: base and quote are both {symbol.base!r}"
    for field in ("lot", "tick"):
        value = getattr(symbol, field)
        if not _is_int(value) or not 0 < value <= AMOUNT_MAX:
            return f"symbol {name}: {field} {value!r} must be an int in 1..{AMOUNT_MAX}"
    for field in ("maker_fee_ppm", "taker_fee_ppm"):
        value = getattr(symbol, field)
        if not _is_int(value) or not 0 <= value <= FEE_PPM_MAX:
            return f"symbol {name}: {field} {value!r} must be an int in 0..{FEE_PPM_MAX}"
    return ""


class Market:
    """A validated set of assets and symbols (every symbol's assets must be listed).

    >>> m = Market([Asset("BTC", 8), Asset("USDT", 6)],
    ...            [Symbol("BTC-USDT", "BTC", "USDT", lot=10**5, tick=10)])
    >>> m.symbols["BTC-USDT"].quote
    'USDT'
    """

    def __init__(self, assets: Iterable[Asset], symbols: Iterable[Symbol] = ()) -> None:
        self.assets: dict[str, Asset] = {}
        self.symbols: dict[str, Symbol] = {}
        for asset in assets:
            if asset.code in self.assets:
                raise DefinitionError(f"asset {asset.code} defined twice")
            self.assets[asset.code] = asset
        for symbol in symbols:
            if symbol.name in self.symbols:
                raise DefinitionError(f"symbol {symbol.name} defined twice")
            for role in ("base", "quote"):
                code = getattr(symbol, role)
                if code not in self.assets:
                    raise DefinitionError(f"symbol {symbol.name}: unknown {role} asset {code!r}")
            self.symbols[symbol.name] = symbol
