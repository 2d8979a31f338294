"""What an amount beyond 64 bits costs the codec: each record type encoded and decoded
with its amounts within 64 bits and with one of them beyond, in one process.

Prints JSON: nanoseconds per record (the best of ``--repeat`` timings of ``--records``
records) and the ratio big / small for each record type and direction. ``decode`` is
``EVENTS.decode``; ``loop`` is the replay loop's form (``decode_plain`` with
``decode_after`` for what it refuses, as every version of the codec offers). Run it
against two trees alternately to compare them::

    PYTHONPATH=src python benchmarks/bench_codec.py
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import msgspec

from ledger import EVENTS
from ledger.protocol.commands import OrderType, SelfTrade, Side, TimeInForce
from ledger.protocol.events import Deposited, FundsUnlocked, OrderAccepted, TradeSettled

WEI = 10**18  # an 18-decimal token: a balance over 18.4 of it is beyond 64 bits


def records(balance: int, count: int) -> dict[str, list]:
    """``count`` records of each type whose balances are about ``balance``."""
    out: dict[str, list] = {"Deposited": [], "OrderAccepted": [], "TradeSettled": [], "FundsUnlocked": []}
    for i in range(count):
        b = balance + i * 7_919
        out["Deposited"].append(Deposited(i + 1, i, 7, i, "ETH", WEI // 10 + i, b, WEI, 1_700_000_000_000 + i))
        out["OrderAccepted"].append(
            OrderAccepted(i + 1, i, 7, i, 2**48 + i, "ETH-USDT", Side.SELL, OrderType.LIMIT, TimeInForce.GTC,
                          SelfTrade.CANCEL_TAKER, 30, 3_000 + i, 0, "ETH", 30 * 10**16, b, WEI + i, 1_700_000_000_000)
        )
        out["TradeSettled"].append(
            TradeSettled(i + 1, "ETH-USDT", i + 1, i + 1, 3_000, 12, Side.BUY, 12 * 10**16, 360_000_000, 7, 2**48 + i,
                         180_000, 9, 2**48 + i + 1, 60 * 10**13, 0, b, 0, 10**12 + i, 0, b + WEI, 5 * WEI, 10**12, 0,
                         10**15 + i, 10**9 + i, True, False)
        )
        out["FundsUnlocked"].append(FundsUnlocked(i + 1, "ETH-USDT", i + 1, 7, 2**48 + i, "ETH", 10**16, b, 0, 0))
    return out


def best_ns(work: Callable[[], object], count: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter_ns()
        work()
        best = min(best, (time.perf_counter_ns() - started) / count)
    return best


def measure(count: int, repeat: int) -> dict:
    small, big = records(10 * WEI, count), records(100 * WEI, count)  # 10 ETH fits 64 bits, 100 does not
    encode, decode = EVENTS.encode, EVENTS.decode
    decode_plain, decode_after = EVENTS.decode_plain, EVENTS.decode_after

    def loop(raws: list[bytes]) -> None:
        for raw in raws:
            try:
                decode_plain(raw)
            except msgspec.MsgspecError as error:
                decode_after(raw, "record", error)

    figures: dict = {}
    for kind in small:
        row: dict = {}
        for label, batch in (("small", small[kind]), ("big", big[kind])):
            raws = [encode(r) for r in batch]
            assert [decode(r) for r in raws] == batch
            row[f"encode_{label}_ns"] = best_ns(lambda b=batch: [encode(r) for r in b], count, repeat)
            row[f"decode_{label}_ns"] = best_ns(lambda w=raws: [decode(r) for r in w], count, repeat)
            row[f"loop_{label}_ns"] = best_ns(lambda w=raws: loop(w), count, repeat)
            row[f"bytes_{label}"] = len(raws[0])
        for op in ("encode", "decode", "loop"):
            row[f"{op}_ratio"] = round(row[f"{op}_big_ns"] / row[f"{op}_small_ns"], 2)
        figures[kind] = {k: round(v) if k.endswith("_ns") else v for k, v in row.items()}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    print(json.dumps(measure(args.records, args.repeat), indent=1))


if __name__ == "__main__":
    main()
