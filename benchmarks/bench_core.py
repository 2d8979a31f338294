"""Benchmarks of the core ledger (UBSCore and the file log), on one core.

    python benchmarks/bench_core.py [--pairs 100000] [--users 1000000] [--json]

Prints:
  * replay: decode + evolve of balance.events read from a file log (target 500,000/s);
  * execute: decide + evolve of commands and engine outputs (target 300,000/s);
  * memory: resident memory of a UBSCore holding --users users with 3 assets each
    (target: 1,000,000 users in at most 1 GiB), measured in a fresh subprocess.

The workload is a realistic mix: per pair of orders, a maker order and a crossing taker
order (two locks), one trade settled for both users, and every fifth pair a cancelled
order (a lock and an unlock) and a deposit and a withdrawal. Figures vary with the
machine: compare them in one run, never across machines.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from ledger import (
    EVENTS,
    Asset,
    CancelOrder,
    Deposit,
    FileLog,
    FsyncPolicy,
    ListAsset,
    ListSymbol,
    PlaceOrder,
    Side,
    Symbol,
    UBSCore,
    Withdraw,
    replay,
)
from ledger.gctune import relaxed_gc
from ledger.logs.base import scan
from ledger.protocol.outputs import OrderCancelled, Trade

SYMBOL = "BTC-USDT"


def listing() -> list:
    return [
        ListAsset(1, Asset("BTC", 8)),
        ListAsset(2, Asset("ETH", 18)),
        ListAsset(3, Asset("USDT", 6)),
        ListSymbol(4, Symbol(SYMBOL, "BTC", "USDT", lot=10**5, tick=10, maker_fee_ppm=1000, taker_fee_ppm=2000)),
    ]


def run_workload(pairs: int, users: int = 10_000, seed: int = 42) -> tuple[UBSCore, list, int, float]:
    """Drive UBSCore with commands and the engine outputs they would cause.

    Returns the reducer, its events encoded (as a stage writes them to its log, outside
    the timed part, so no event object outlives its batch), the number of inputs handled
    and the seconds spent inside execute/settle (decide + evolve) only.
    """
    rng = random.Random(seed)
    core = UBSCore()
    events: list[bytes] = []
    encode = EVENTS.encode
    offset = 0
    engine_seq = 0
    inputs = 0
    spent = 0.0
    clock = time.perf_counter

    def command(c) -> list:
        nonlocal offset, inputs, spent
        started = clock()
        out = core.execute(c, offset)
        spent += clock() - started
        offset += 1
        inputs += 1
        events.extend([encode(e) for e in out])
        return out

    def output(o) -> None:
        nonlocal inputs, spent
        started = clock()
        out = core.settle(o)
        spent += clock() - started
        events.extend([encode(e) for e in out])
        inputs += 1

    for c in listing():
        command(c)
    request = 10
    for user in range(1, users + 1):
        command(Deposit(user, request, "BTC", 10**12))
        command(Deposit(user, request + 1, "USDT", 10**14))
    for i in range(pairs):
        request += 2
        maker, taker = rng.randint(1, users), rng.randint(1, users)
        while taker == maker:
            taker = rng.randint(1, users)
        price = 10_000 + rng.randint(-50, 50)
        qty = rng.randint(1, 100)
        maker_side = Side(rng.randint(0, 1))
        taker_side = Side(1 - maker_side)
        m = command(PlaceOrder(maker, request, SYMBOL, maker_side, qty, price))[0]
        t_price = price + 2 if taker_side == Side.BUY else price - 2
        t = command(PlaceOrder(taker, request + 1, SYMBOL, taker_side, qty, t_price))[0]
        engine_seq += 1
        output(
            Trade(engine_seq, SYMBOL, t.seq, engine_seq, price, qty, maker_side, maker, m.order_id, taker,
                  t.order_id, t_price, True, True)
        )
        if i % 5 == 0:
            user = rng.randint(1, users)
            o = command(PlaceOrder(user, request + 2, SYMBOL, Side.BUY, qty, price - 100))[0]
            c = command(CancelOrder(user, request + 3, o.order_id))[0]
            engine_seq += 1
            output(OrderCancelled(engine_seq, SYMBOL, c.seq, o.order_id, user, qty, 20))
            command(Deposit(user, request + 4, "ETH", 10**18 * rng.randint(1, 100)))
            command(Withdraw(user, request + 5, "USDT", rng.randint(1, 10**6)))
            request += 4
    return core, events, inputs, spent


def bench_replay(events: list[bytes], live_hash: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "balance.events"
        with FileLog(path, fsync=FsyncPolicy.NEVER) as log:
            for start in range(0, len(events), 10_000):
                log.append(events[start : start + 10_000])
        size = sum(p.stat().st_size for p in path.glob("*.seg"))
        best = None
        floor = None
        for _ in range(3):
            with FileLog(path, readonly=True) as log:
                started = time.perf_counter()
                core = replay(log)
                seconds = time.perf_counter() - started
            if core.state_hash() != live_hash:
                raise SystemExit("replayed hash differs from the live hash")
            best = seconds if best is None else min(best, seconds)
            # The same read and decode with no evolve at all: the ceiling of any replay
            # in this process, whatever evolve costs.
            with FileLog(path, readonly=True) as log, relaxed_gc():
                started = time.perf_counter()
                decode_plain, decode_after = EVENTS.decode_plain, EVENTS.decode_after
                for batch in scan(log):
                    for raw in batch.values:
                        try:
                            decode_plain(raw)
                        except msgspec.MsgspecError as error:
                            decode_after(raw, "record", error)
                seconds = time.perf_counter() - started
            floor = seconds if floor is None else min(floor, seconds)
    assert best is not None and floor is not None
    return {
        "events": len(events),
        "log_bytes": size,
        "seconds_best_of_3": round(best, 3),
        "events_per_s": round(len(events) / best),
        "read_decode_only_events_per_s": round(len(events) / floor),
    }


def bench_decode_only(events: list[bytes]) -> dict:
    records = events
    decode = EVENTS.decode
    started = time.perf_counter()
    for record in records:
        decode(record)
    seconds = time.perf_counter() - started
    return {"events_per_s": round(len(records) / seconds)}


MEMORY_CHILD = """
import resource, sys, gc
from ledger import UBSCore, Asset, ListAsset, Deposit
users = int(sys.argv[1])
def rss():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
before = rss()
core = UBSCore()
for i, code in enumerate(('BTC', 'ETH', 'USDT')):
    core.execute(ListAsset(i + 1, Asset(code, 8)), i)
state = core.state
offset = 3
# Balances are realistic (not small cached ints), and the request window is full.
for user in range(1, users + 1):
    for code in ('BTC', 'ETH', 'USDT'):
        core.execute(Deposit(user, offset, code, 10**9 + user), offset)
        offset += 1
gc.collect()
after = rss()
print(before, after, len(state.accounts), len(state.requests))
"""


def bench_memory(users: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(users)], capture_output=True, text=True, check=True
    )
    before, after, accounts, window = (int(x) for x in out.stdout.split())
    return {
        "users": users,
        "assets_per_user": 3,
        "rss_bytes": after,
        "rss_mib": round(after / 2**20, 1),
        "state_bytes_approx": after - before,
        "accounts": accounts,
        "request_window_entries": window,
        "target_mib": 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1_000_000, help="users for the memory figure")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    # The stage and the CLI run with the collector relaxed (ledger.gctune); the run at
    # CPython's default settings shows what that is worth, in the same process.
    _core, _events, default_inputs, default_spent = run_workload(args.pairs)
    del _core, _events
    gc.collect()
    with relaxed_gc():
        core, events, inputs, spent = run_workload(args.pairs)
    rejected = sum(1 for e in map(EVENTS.decode, events) if type(e).__name__ == "Rejected")
    if rejected:
        raise SystemExit(f"workload produced {rejected} rejections; the benchmark expects none")
    execute = {
        "inputs": inputs,
        "seconds": round(spent, 3),
        "inputs_per_s": round(inputs / spent),
        "inputs_per_s_default_gc": round(default_inputs / default_spent),
    }
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "msgspec": msgspec.__version__,
            "platform": sys.platform,
        },
        "execute_decide_evolve": execute,
        "replay_file_log": bench_replay(events, core.state_hash()),
        "decode_only": bench_decode_only(events),
        "memory": bench_memory(args.users),
        "max_rss_mib_this_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if args.json:
        print(msgspec.json.encode(result).decode())
        return
    mix: dict[str, int] = {}
    for e in map(EVENTS.decode, events):
        mix[type(e).__name__] = mix.get(type(e).__name__, 0) + 1
    print(f"workload: {args.pairs:,} order pairs -> {len(events):,} events {mix}")
    print(f"execute (decide+evolve): {execute['inputs_per_s']:>10,} inputs/s   (target 300,000)")
    print(f"  same, default collector: {execute['inputs_per_s_default_gc']:>8,} inputs/s")
    r = result["replay_file_log"]
    print(f"replay from file log:    {r['events_per_s']:>10,} events/s   (target 500,000)")
    print(f"  read + decode, no evolve: {r['read_decode_only_events_per_s']:>7,} events/s (the ceiling)")
    print(f"decode only:             {result['decode_only']['events_per_s']:>10,} events/s")
    m = result["memory"]
    print(f"memory, {m['users']:,} users x 3 assets: {m['rss_mib']:,} MiB RSS (target 1,024)")


if __name__ == "__main__":
    main()
