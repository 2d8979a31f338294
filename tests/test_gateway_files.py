"""The same gateway over the embedded default: ``ledger run ubscore``, ``engine``,
``project`` and ``gateway`` on file logs into SQLite, no Kafka, no Cassandra."""

from __future__ import annotations

import time
from pathlib import Path

from gateway_support import Deployment

# Bounds that only turn a hang into a failure.
SETTLE_S_MAX = 30


def test_the_gateway_serves_a_file_log_deployment(tmp_path: Path) -> None:
    d = Deployment(tmp_path, None, None).start()
    try:
        operator = d.client(operator=True)
        for code, decimals in (("BTC", 8), ("USDT", 6)):
            assert operator.list_asset(code, decimals).status == 200
        operator.list_symbol("BTC-USDT", "BTC", "USDT", lot="0.01", price_step="1").check()
        trader = d.client(7)
        deposit = operator.deposit(7, "USDT", "1000.5").check()
        assert (deposit["available"], deposit["seq"]) == ("1000.5", 4)
        order = trader.place_order("BTC-USDT", "buy", "0.5", "150", client_order_id=1).check()
        assert order["locked"] == {"asset": "USDT", "amount": "75"}
        assert trader.balances(min_seq=order["seq"]).check()["balances"] == {
            "USDT": {"available": "925.5", "locked": "75"}}
        deadline = time.monotonic() + SETTLE_S_MAX
        while not (depth := trader.depth("BTC-USDT").check())["bids"]:
            assert time.monotonic() < deadline, depth
            time.sleep(0.05)
        assert depth["bids"] == [{"price": "150", "qty": "0.5", "orders": 1}]
        assert trader.order(order["order_id"]).check()["status"] == "open"
    finally:
        d.stop()
