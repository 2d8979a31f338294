"""A first session with the HTTP gateway, through ``ledger.client``.

Start a deployment and a gateway (see docs/gateway.md), make an operator key and a
trader key with ``ledger keys create``, then:

    python examples/gateway_quickstart.py --url http://127.0.0.1:8080 \\
        --operator KEY_ID:PRIVATE_KEY --trader KEY_ID:PRIVATE_KEY --user 1001

It lists BTC, USDT and BTC-USDT (idempotently: running it twice lists them once),
credits the trader, places a limit order, reads it back with read-your-writes, and
cancels it. Every amount is a decimal string.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any

from ledger.client import Client


def quickstart(url: str, operator: tuple[str, str], trader: tuple[str, str], user: int) -> dict[str, Any]:
    """The session; returns what it saw (the tests check it)."""
    with Client(url, *operator) as ops, Client(url, *trader) as me:
        for code, decimals in (("BTC", 8), ("USDT", 6)):
            listed = ops.list_asset(code, decimals)
            assert listed.status in (200, 422), listed  # 422: ASSET_EXISTS, listed before
        ops.list_symbol("BTC-USDT", "BTC", "USDT", lot="0.01", price_step="1", maker_fee_ppm=1_000,
                        taker_fee_ppm=2_000)
        # An idempotency key makes the deposit safe to retry: a second send with the same
        # key and body is answered with the first answer, and credits nothing more.
        key = f"deposit-{uuid.uuid4()}"
        deposit = ops.deposit(user, "USDT", "1000.50", idempotency_key=key).check()
        again = ops.deposit(user, "USDT", "1000.50", idempotency_key=key).check()
        assert again["seq"] == deposit["seq"] and again["retry"] is True
        order = me.place_order("BTC-USDT", "buy", "0.25", "2000").check()
        # The answer's seq: a read with min_seq waits until the projection has it.
        balances = me.balances(min_seq=order["seq"]).check()["balances"]
        status = me.order(order["order_id"], min_seq=order["seq"]).check()
        cancel = me.cancel(order["order_id"]).check()
        return {"deposit": deposit, "order": order, "balances": balances, "status": status, "cancel": cancel}


def _key(text: str) -> tuple[str, str]:
    key_id, sep, private = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError("give KEY_ID:PRIVATE_KEY")
    return key_id, private


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--operator", type=_key, required=True, help="KEY_ID:PRIVATE_KEY of an operator key")
    parser.add_argument("--trader", type=_key, required=True, help="KEY_ID:PRIVATE_KEY of the trader's key")
    parser.add_argument("--user", type=int, required=True, help="the trader key's user")
    args = parser.parse_args(argv)
    seen = quickstart(args.url, args.operator, args.trader, args.user)
    order = seen["order"]
    print(f"deposit seq {seen['deposit']['seq']}: {seen['deposit']['amount']} USDT")
    print(f"order {order['order_id']}: buy {order['qty']} BTC at {order['price']}, locked {order['locked']}")
    print(f"balances: {seen['balances']}")
    print(f"cancel requested (seq {seen['cancel']['seq']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
