"""Decimal strings to the ledger's integers and back, exactly.

Clients write money as decimal strings ("0.5", "150.00"): never a JSON number, so no
float ever holds a balance. An amount becomes the asset's minor units, a quantity whole
lots, a price whole ticks. A value that does not convert exactly (more precision than
the asset has, a quantity that is not whole lots, a price that is not whole ticks) is a
``MoneyError`` that names the field and the step it must be a multiple of; nothing is
ever rounded. Trailing zeros are not precision: "150.00" is 150.

A symbol's ``lot`` is base minor units per lot and its ``tick`` quote minor units per lot
per price step, so one price step, in quote units per base unit, is
``tick * 10**base_decimals / (lot * 10**quote_decimals)``.

>>> from ledger.protocol.market import Symbol
>>> s = Symbol("BTC-USDT", "BTC", "USDT", lot=10**6, tick=10**4)
>>> to_minor("1.5", 8, "amount"), to_lots("0.5", s, 8, "qty"), to_ticks("150.00", s, 8, 6, "price")
(150000000, 50, 150)
>>> format_minor(75_000, 6), format_qty(50, s, 8), format_price(150, s, 8, 6)
('0.075', '0.5', '150')
"""

from __future__ import annotations

import re
from fractions import Fraction

from ledger.protocol.limits import AMOUNT_MAX, INT64_MAX
from ledger.protocol.market import Symbol

# The longest decimal string accepted: far beyond any real amount (AMOUNT_MAX has 39
# digits, plus ASSET_DECIMALS_MAX decimals), short enough that parsing is cheap.
DECIMAL_CHARS_MAX = 80

_DECIMAL = re.compile(r"([0-9]+)(?:\.([0-9]+))?\Z")


class MoneyError(ValueError):
    """A value that is not an exact, positive decimal of its field's step."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_decimal(text: object, field: str) -> Fraction:
    """A non-negative decimal string as an exact fraction (no sign, no exponent, digits
    on both sides of an optional point)."""
    if type(text) is not str:
        raise MoneyError(field, f"must be a decimal string such as \"0.5\", not {type(text).__name__}")
    if len(text) > DECIMAL_CHARS_MAX:
        raise MoneyError(field, f"longer than {DECIMAL_CHARS_MAX} characters")
    match = _DECIMAL.match(text)
    if match is None:
        raise MoneyError(field, f"{text!r} is not a decimal string of digits with an optional point, such as \"0.5\"")
    whole, fraction = match.groups()
    if not fraction:
        return Fraction(int(whole))
    return Fraction(int(whole + fraction), 10 ** len(fraction))


def format_step(step: Fraction) -> str:
    """A step as a decimal string when it has one, otherwise as ``p/q``."""
    denominator = step.denominator
    twos = fives = 0
    while denominator % 2 == 0:
        denominator //= 2
        twos += 1
    while denominator % 5 == 0:
        denominator //= 5
        fives += 1
    if denominator != 1:
        return f"{step.numerator}/{step.denominator}"
    places = max(twos, fives)
    scaled = step.numerator * 10**places // step.denominator
    return _decimal_of(scaled, places)


def _decimal_of(units: int, places: int) -> str:
    if places == 0:
        return str(units)
    sign = "-" if units < 0 else ""
    whole, part = divmod(abs(units), 10**places)
    text = f"{whole}.{part:0{places}d}".rstrip("0").rstrip(".")
    return sign + text


def _positive(value: Fraction, text: str, field: str) -> None:
    if value <= 0:
        raise MoneyError(field, f"{text!r} must be more than zero")


def to_minor(text: object, decimals: int, field: str, limit: int = AMOUNT_MAX) -> int:
    """A positive amount in minor units of an asset with ``decimals``."""
    value = parse_decimal(text, field)
    _positive(value, str(text), field)
    units = value * 10**decimals
    if units.denominator != 1:
        raise MoneyError(field, f"{text!r} has more precision than the asset's {decimals} decimals allow")
    if units.numerator > limit:
        raise MoneyError(field, f"{text!r} is beyond the largest amount, {format_minor(limit, decimals)}")
    return units.numerator


def lot_step(symbol: Symbol, base_decimals: int) -> Fraction:
    """One lot in base units."""
    return Fraction(symbol.lot, 10**base_decimals)


def price_step(symbol: Symbol, base_decimals: int, quote_decimals: int) -> Fraction:
    """One price tick in quote units per base unit."""
    return Fraction(symbol.tick * 10**base_decimals, symbol.lot * 10**quote_decimals)


def to_lots(text: object, symbol: Symbol, base_decimals: int, field: str) -> int:
    """A positive quantity in base units as whole lots."""
    value = parse_decimal(text, field)
    _positive(value, str(text), field)
    step = lot_step(symbol, base_decimals)
    lots = value / step
    if lots.denominator != 1:
        raise MoneyError(field, f"{text!r} is not a whole number of lots of {format_step(step)} {symbol.base}")
    if lots.numerator > INT64_MAX:
        raise MoneyError(field, f"{text!r} is more lots than an order can hold ({INT64_MAX:,})")
    return lots.numerator


def to_ticks(text: object, symbol: Symbol, base_decimals: int, quote_decimals: int, field: str) -> int:
    """A positive price in quote units per base unit as whole ticks."""
    value = parse_decimal(text, field)
    _positive(value, str(text), field)
    step = price_step(symbol, base_decimals, quote_decimals)
    ticks = value / step
    if ticks.denominator != 1:
        raise MoneyError(field, f"{text!r} is not a whole number of price steps of {format_step(step)} {symbol.quote}")
    if ticks.numerator > INT64_MAX:
        raise MoneyError(field, f"{text!r} is beyond the highest price ({INT64_MAX:,} steps)")
    return ticks.numerator


def format_minor(units: int, decimals: int) -> str:
    """Minor units as the shortest exact decimal string."""
    return _decimal_of(units, decimals)


def format_qty(lots: int, symbol: Symbol, base_decimals: int) -> str:
    """Lots as base units."""
    return format_minor(lots * symbol.lot, base_decimals)


def format_price(ticks: int, symbol: Symbol, base_decimals: int, quote_decimals: int) -> str:
    """Ticks as quote units per base unit (``p/q`` if the step has no decimal form)."""
    return format_step(ticks * price_step(symbol, base_decimals, quote_decimals)) if ticks else "0"
