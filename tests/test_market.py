"""Market definitions fail at construction with a message naming the field."""

from __future__ import annotations

import pytest

from ledger import Asset, DefinitionError, Market, Symbol


@pytest.mark.parametrize(
    ("build", "says"),
    [
        (lambda: Symbol("BTC-USDT", "BTC", "USDT", lot=0, tick=1), "lot 0"),
        (lambda: Symbol("BTC-USDT", "BTC", "USDT", lot=1, tick=0), "tick 0"),
        (lambda: Symbol("BTC-USDT", "BTC", "USDT", lot=1, tick=1, maker_fee_ppm=-1), "maker_fee_ppm -1"),
        (lambda: Symbol("BTC-USDT", "BTC", "USDT", lot=1, tick=1, taker_fee_ppm=1_000_001), "taker_fee_ppm"),
        (lambda: Symbol("BTC-USDT", "BTC", "BTC", lot=1, tick=1), "base and quote"),
        (lambda: Symbol("BTC-USDT", "BTC", "USDT", lot=1.0, tick=1), "lot 1.0"),
        (lambda: Asset("btc", 8), "asset code"),
        (lambda: Asset("BTC", -1), "decimals"),
        (lambda: Market([Asset("BTC", 8)], [Symbol("BTC-USDT", "BTC", "USDT", 1, 1)]), "unknown quote asset"),
        (lambda: Market([Asset("BTC", 8), Asset("BTC", 8)]), "defined twice"),
    ],
)
def test_bad_definitions_fail_at_construction(build, says: str) -> None:
    with pytest.raises(DefinitionError, match=says):
        build()


def test_a_full_fee_is_allowed_and_the_market_is_usable() -> None:
    market = Market(
        [Asset("BTC", 8), Asset("USDT", 6)],
        [Symbol("BTC-USDT", "BTC", "USDT", lot=10**6, tick=10**4, maker_fee_ppm=0, taker_fee_ppm=1_000_000)],
    )
    assert market.symbols["BTC-USDT"].taker_fee_ppm == 1_000_000
