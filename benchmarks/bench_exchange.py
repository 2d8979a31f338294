"""The whole in-process exchange (UBSCore + matching engines + settlement of trades).

    python benchmarks/bench_exchange.py [--orders 100000] [--users 1000] [--symbols 2] [--json]

Runs the deterministic demo workload twice: once on in-memory logs (the reducers and
encoding only) and once on file logs with fsync after every 1,000-command batch (what
``ledger demo`` does). Prints commands per second end to end (target: 100,000 orders/s
on one core): for in-memory logs, both ``Exchange.submit`` alone and with the time the
workload generator takes to make the commands.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import msgspec

from ledger.app.demo import BATCH_COMMANDS, Workload, run_demo
from ledger.app.exchange import Exchange
from ledger.logs.base import MemoryLog
from ledger.logs.file import FsyncPolicy


def in_memory(orders: int, users: int, symbols: int, seed: int) -> dict:
    exchange = Exchange(MemoryLog(), MemoryLog(), lambda symbol: MemoryLog(symbol))
    workload = Workload(seed, users, symbols)
    workload.observe(exchange.submit(workload.setup()))
    clock = time.perf_counter
    in_exchange = 0.0
    started = clock()
    done = 0
    while done < orders:
        size = min(BATCH_COMMANDS, orders - done)
        batch = [workload.next(done + i) for i in range(size)]
        submitted = clock()
        events = exchange.submit(batch)
        in_exchange += clock() - submitted
        workload.observe(events)
        done += size
    seconds = clock() - started
    # The workload generator (random choices, watching events for orders to cancel) is
    # not part of the exchange: the first figure is Exchange.submit alone.
    return {"commands": orders, "seconds": round(seconds, 3),
            "commands_per_s": round(orders / in_exchange),
            "commands_per_s_with_generator": round(orders / seconds),
            "events": exchange.event_count, "engine_outputs": exchange.output_count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--symbols", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    memory = in_memory(args.orders, args.users, args.symbols, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_demo(tmp + "/demo", args.users, args.symbols, args.orders, args.seed, progress=False,
                           fsync=FsyncPolicy.ALWAYS)
    files = {"commands": summary.commands, "seconds": summary.seconds,
             "commands_per_s": round(summary.commands_per_second),
             "exchange_commands_per_s": round(summary.exchange_commands_per_second),
             "check_seconds": summary.check_seconds, "checks_ok": summary.checks_ok}
    result = {"in_memory_logs": memory, "file_logs_fsync_per_batch": files}
    if args.json:
        print(msgspec.json.encode(result).decode())
        return
    print(f"in-memory logs: {memory['commands_per_s']:>8,} commands/s in Exchange.submit ({memory['events']:,} "
          f"events, {memory['engine_outputs']:,} engine outputs)")
    print(f"  with the workload generator: {memory['commands_per_s_with_generator']:>8,} commands/s")
    print(f"file logs:      {files['exchange_commands_per_s']:>8,} commands/s in Exchange.submit (`ledger demo`, "
          f"fsync every {BATCH_COMMANDS} commands)")
    print(f"  with the workload generator: {files['commands_per_s']:>8,} commands/s; checks after the run "
          f"{files['check_seconds']:.2f} s, ok: {files['checks_ok']}")
    print("target: 100,000 orders/s end to end on one core")


if __name__ == "__main__":
    main()
