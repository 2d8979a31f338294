"""The checks ``ledger demo`` runs after its run (``ledger.app.exchange.verify``), taken apart.

    python benchmarks/bench_verify.py [--orders 50000] [--users 1000] [--symbols 2] [--rounds 5] [--json]

Writes a demo deployment (fsync never) in a scratch directory, then times, in alternating
rounds on the same logs, CPU seconds of:

* ``verify``: one read of every log, balance.events decoded once and shared by the UBSCore
  replay and every engine re-run, each output log compared with its re-run as it goes;
* the UBSCore replay alone (the floor of that shared pass: every event must be decoded
  for it, so nothing an engine skips saves a decode there);
* one engine re-run alone over balance.events, decoding every record, and the same with
  each record's tag peeked first so that the events the engine ignores are never decoded:
  what peeking the tag would buy an engine that reads the log on its own.

Prints the minimum and median of each (the minimum is the least disturbed by other work
on the machine) and the ratios of the medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from ledger.app.demo import run_demo
from ledger.app.exchange import verify
from ledger.gctune import relaxed_gc
from ledger.logs import layout
from ledger.logs.base import scan
from ledger.logs.file import FileLog, FsyncPolicy
from ledger.protocol.codec import EVENTS
from ledger.protocol.events import BALANCE_EVENT_TYPES
from ledger.rebuild import replay
from matching.engine import MatchingEngine

# The tags of the events an engine acts on; every other known tag it ignores.
ENGINE_TAGS = frozenset({b"OrderAccepted", b"CancelRequested", b"SymbolListed"})
KNOWN_TAGS = frozenset(t.__name__.encode() for t in BALANCE_EVENT_TYPES)


def peek_tag(raw: bytes) -> bytes | None:
    """The tag of a msgpack record ``[tag, ...]`` (array header, then a fixstr), or None
    when the bytes do not start that way (then only a full decode can say what they are)."""
    head = raw[0]
    if 0x90 <= head <= 0x9F:
        at = 1
    elif head == 0xDC:
        at = 3
    elif head == 0xDD:
        at = 5
    else:
        return None
    size = raw[at] - 0xA0 if len(raw) > at else -1
    if not 0 <= size < 32:
        return None
    return raw[at + 1 : at + 1 + size]


def rerun_decoding_all(events: FileLog, symbol: str) -> int:
    engine = MatchingEngine(symbol)
    decode, outputs = EVENTS.decode, 0
    for batch in scan(events):
        for raw in batch.values:
            outputs += len(engine.handle(decode(raw)))
    return outputs


def rerun_peeking(events: FileLog, symbol: str) -> int:
    engine = MatchingEngine(symbol)
    decode, outputs = EVENTS.decode, 0
    for batch in scan(events):
        for raw in batch.values:
            tag = peek_tag(raw)
            # An unknown or unreadable tag is decoded anyway, so its error is raised.
            if tag is not None and tag in KNOWN_TAGS and tag not in ENGINE_TAGS:
                continue
            outputs += len(engine.handle(decode(raw)))
    return outputs


def cpu_seconds(work: Callable[[], object]) -> float:
    with relaxed_gc():
        started = time.process_time()
        work()
        return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--symbols", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "demo"
        run_demo(root, args.users, args.symbols, args.orders, progress=False, fsync=FsyncPolicy.NEVER)
        events = FileLog(layout.events_dir(root), readonly=True)
        outputs = {s: FileLog(layout.output_dir(root, s), readonly=True) for s in layout.output_symbols(root)}
        symbol = sorted(outputs)[0]
        assert rerun_decoding_all(events, symbol) == rerun_peeking(events, symbol) == outputs[symbol].end_offset()
        cases: dict[str, Callable[[], object]] = {
            "verify (shared pass)": lambda: verify(events, outputs),
            "UBSCore replay alone": lambda: replay(events),
            f"{symbol} re-run alone, decoding every event": lambda: rerun_decoding_all(events, symbol),
            f"{symbol} re-run alone, peeking tags first": lambda: rerun_peeking(events, symbol),
        }
        seconds: dict[str, list[float]] = {name: [] for name in cases}
        for _round in range(args.rounds):
            for name, work in cases.items():
                seconds[name].append(cpu_seconds(work))
        result = {
            "events": events.end_offset(),
            "outputs": {s: log.end_offset() for s, log in sorted(outputs.items())},
            "cpu_seconds": {n: {"min": round(min(v), 3), "median": round(statistics.median(v), 3)}
                            for n, v in seconds.items()},
        }
    if args.json:
        print(msgspec.json.encode(result).decode())
        return
    print(f"{result['events']:,} balance events, outputs {result['outputs']}; CPU seconds over {args.rounds} rounds")
    for name, row in result["cpu_seconds"].items():
        print(f"  {name:<48} min {row['min']:.3f}  median {row['median']:.3f}")
    names = list(cases)
    medians = {n: statistics.median(v) for n, v in seconds.items()}
    print(f"  peeking / decoding every event: {medians[names[3]] / medians[names[2]]:.2f}")
    print(f"  verify / UBSCore replay alone:  {medians[names[0]] / medians[names[1]]:.2f}")


if __name__ == "__main__":
    main()
