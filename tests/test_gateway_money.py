"""The gateway's exact decimals (``ledger.app.gateway.money``), without any service:
every amount, quantity and price a client can write converts to the ledger's integers
and back unchanged; anything else is refused naming the field and the step, never
rounded. And the texts and the document the gateway answers with are complete."""

from __future__ import annotations

import re
import types
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ledger.app.gateway import money
from ledger.protocol.limits import AMOUNT_MAX, ASSET_DECIMALS_MAX, INT64_MAX
from ledger.protocol.market import Symbol
from ledger.protocol.reasons import Reason, describe

decimals = st.integers(0, ASSET_DECIMALS_MAX)
# Lots and ticks of real markets and of absurd ones.
steps = st.one_of(st.sampled_from([1, 10, 100, 10**6, 10**8]), st.integers(1, 10**12))


@st.composite
def markets(draw: st.DrawFn) -> tuple[Symbol, int, int]:
    symbol = Symbol("B-Q", "B", "Q", lot=draw(steps), tick=draw(steps))
    return symbol, draw(st.integers(0, 18)), draw(st.integers(0, 18))


@given(decimals, st.integers(1, AMOUNT_MAX))
def test_an_amount_round_trips_through_its_decimal_string(places: int, units: int) -> None:
    text = money.format_minor(units, places)
    assert money.to_minor(text, places, "$.amount") == units
    # Trailing zeros are not precision.
    padded = text + "000" if "." in text else text + ".000"
    assert money.to_minor(padded, places, "$.amount") == units


@st.composite
def written_decimals(draw: st.DrawFn) -> Decimal:
    """A positive decimal with up to 40 places, as a client may write one."""
    places = draw(st.integers(0, 40))
    return draw(st.decimals(min_value=Decimal(1).scaleb(-places), max_value=Decimal(10**20), places=places))


@given(decimals, written_decimals())
def test_a_decimal_converts_exactly_or_is_refused_for_its_precision(places: int, value: Decimal) -> None:
    text = format(value, "f")
    exact = Fraction(value) * 10**places
    if exact.denominator == 1 and exact <= AMOUNT_MAX:
        assert money.to_minor(text, places, "$.amount") == exact.numerator
        return
    with pytest.raises(money.MoneyError) as refused:
        money.to_minor(text, places, "$.amount")
    assert refused.value.field == "$.amount"
    says = f"{places} decimals" if exact.denominator != 1 else "largest amount"
    assert says in refused.value.message


@given(markets(), st.integers(1, INT64_MAX))
def test_a_quantity_round_trips_as_whole_lots(market: tuple[Symbol, int, int], lots: int) -> None:
    symbol, base_decimals, _ = market
    text = money.format_qty(lots, symbol, base_decimals)
    assert money.to_lots(text, symbol, base_decimals, "$.qty") == lots


@given(markets(), st.integers(1, INT64_MAX))
def test_a_price_round_trips_as_whole_ticks(market: tuple[Symbol, int, int], ticks: int) -> None:
    symbol, base_decimals, quote_decimals = market
    text = money.format_price(ticks, symbol, base_decimals, quote_decimals)
    if "/" in text:  # a price with no decimal form: no client can write it
        with pytest.raises(money.MoneyError):
            money.to_ticks(text, symbol, base_decimals, quote_decimals, "$.price")
    else:
        assert money.to_ticks(text, symbol, base_decimals, quote_decimals, "$.price") == ticks


@given(markets(), st.integers(1, 10**6), st.integers(2, 10))
def test_a_quantity_between_lots_is_refused_naming_the_lot(market: tuple[Symbol, int, int], lots: int,
                                                          parts: int) -> None:
    symbol, base_decimals, _ = market
    step = money.lot_step(symbol, base_decimals)
    value = lots * step + step / parts
    text = money.format_step(value)
    assume("/" not in text)
    with pytest.raises(money.MoneyError) as refused:
        money.to_lots(text, symbol, base_decimals, "$.qty")
    assert refused.value.field == "$.qty"
    assert f"lots of {money.format_step(step)} B" in refused.value.message


@given(markets(), st.integers(1, 10**6), st.integers(2, 10))
def test_a_price_between_ticks_is_refused_naming_the_step(market: tuple[Symbol, int, int], ticks: int,
                                                         parts: int) -> None:
    symbol, base_decimals, quote_decimals = market
    step = money.price_step(symbol, base_decimals, quote_decimals)
    text = money.format_step(ticks * step + step / parts)
    assume("/" not in text)
    with pytest.raises(money.MoneyError) as refused:
        money.to_ticks(text, symbol, base_decimals, quote_decimals, "$.price")
    assert refused.value.field == "$.price"
    assert f"price steps of {money.format_step(step)} Q" in refused.value.message


SYMBOL = Symbol("BTC-USDT", "BTC", "USDT", lot=10**6, tick=10**6)  # 0.01 BTC, 1 USDT


@pytest.mark.parametrize("value", [0.5, 1, True, Decimal("0.5"), Fraction(1, 2), None, b"1", ["1"]],
                         ids=lambda v: type(v).__name__)
def test_only_a_string_is_money(value: object) -> None:
    for convert in (lambda: money.to_minor(value, 8, "$.amount"), lambda: money.to_lots(value, SYMBOL, 8, "$.qty"),
                    lambda: money.to_ticks(value, SYMBOL, 8, 6, "$.price")):
        with pytest.raises(money.MoneyError) as refused:
            convert()
        assert refused.value.message.startswith("must be a decimal string")
        assert type(value).__name__ in refused.value.message


@pytest.mark.parametrize("text", ["", "-1", "+1", " 1", "1 ", "1.", ".5", "1e3", "1E3", "0x10", "1_000", "1,5",
                                  "inf", "NaN", "1\n", "\u0661", "\uff11", "\u00bd", "\u00b2", "1\u0660", "\u09e7.5",
                                  "0.\u0665", "1" * 81])
def test_anything_but_ascii_digits_and_one_point_is_refused(text: str) -> None:
    with pytest.raises(money.MoneyError) as refused:
        money.to_minor(text, 8, "$.amount")
    assert refused.value.field == "$.amount"
    assert str(refused.value).startswith("$.amount: ")


@given(st.text(st.characters(categories=["Nd"]).filter(lambda c: not "0" <= c <= "9"), min_size=1, max_size=5),
       st.sampled_from(["", "1", "0.", "1."]))
def test_digits_of_other_scripts_are_refused(digits: str, prefix: str) -> None:
    assert int(digits) >= 0  # Python's int() would take them: the gateway does not
    with pytest.raises(money.MoneyError):
        money.to_minor(prefix + digits, 8, "$.amount")


@pytest.mark.parametrize(("text", "says"), [("0", "more than zero"), ("0.000", "more than zero"),
                                             ("9" * 40, "largest amount")])
def test_zero_and_too_much_are_refused_saying_so(text: str, says: str) -> None:
    with pytest.raises(money.MoneyError) as refused:
        money.to_minor(text, 8, "$.amount")
    assert says in refused.value.message


def test_every_reason_has_a_text_of_its_own() -> None:
    texts = {reason: describe(reason) for reason in Reason}
    for reason, text in texts.items():
        assert text and text != f"reason {int(reason)}", reason
    assert len(set(texts.values())) == len(texts)


def _app_routes() -> set[tuple[str, str]]:
    from starlette.routing import Route

    from ledger.app.gateway.app import Gateway, GatewayConfig

    # Building the application needs no logs, store or keys: nothing is served here.
    gateway = Gateway(types.SimpleNamespace(on_listing=None), lambda: None, None, GatewayConfig())  # type: ignore[arg-type]
    try:
        routes = set()
        for route in gateway.app.routes:
            assert isinstance(route, Route)
            path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
            routes |= {(method.lower(), path) for method in route.methods or () if method != "HEAD"}
        return routes
    finally:
        gateway._readers.shutdown()


def test_the_openapi_document_lists_every_route_the_gateway_serves() -> None:
    pytest.importorskip("starlette")
    from ledger.app.gateway.openapi import document

    listed = {(method, path) for path, operations in document()["paths"].items() for method in operations}
    assert listed == _app_routes()
    for operations in document()["paths"].values():
        for operation in operations.values():
            body = operation.get("requestBody")
            if body is not None:
                ref = body["content"]["application/json"]["schema"]["$ref"]
                assert ref.rsplit("/", 1)[1] in document()["components"]["schemas"]
