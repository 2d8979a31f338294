"""The exchange as it is deployed: ``ledger run ubscore``, ``ledger run engine`` and
``ledger run project``, each a separate OS process, over the real Kafka into the real
Cassandra. Each run is compared with the in-process exchange on the same commands, keyed
by client request (``support.outcome``), and audited: every command has
exactly one answer, every stream's seqs are contiguous, the projection verifies.

All tests share the suite's servers; every run has topics and a keyspace of its own."""

from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ledger import COMMANDS
from ledger.app.load import planned_workload
from ledger.app.streams import KafkaStreams
from ledger.logs import layout
from support import CASSANDRA_PORT, KAFKA_BOOTSTRAP, exchange_outcome, outcome, records

pytestmark = [pytest.mark.kafka, pytest.mark.cassandra]

ROOT = Path(__file__).resolve().parent.parent
# A differential run's size (the floor: 20,000 commands, 200 users, 3 symbols).
COMMANDS_COUNT = 20_000
USERS = 200
SYMBOLS = 3
# Seconds with nothing to do after which a service exits (the run is over).
IDLE_EXIT_S = 4
# Bounds that only turn a hung run into a failure.
RUN_S_MAX = 300
KILL_WAIT_S_MAX = 120


@functools.cache
def workload() -> tuple[Any, ...]:
    return tuple(planned_workload(seed=13, commands=COMMANDS_COUNT, users=USERS, symbols=SYMBOLS))


@functools.cache
def expected() -> dict[str, Any]:
    return exchange_outcome(list(workload()))


class Pipeline:
    """One deployment on the shared Kafka and Cassandra: a topic prefix, a keyspace, and
    the service processes started on them."""

    def __init__(self, tmp_path: Path, batch: int = 300) -> None:
        tag = uuid.uuid4().hex[:10]
        self.prefix = f"pipe-{tag}-"
        self.keyspace = f"pipe_{tag}"
        self.store = f"cql://127.0.0.1:{CASSANDRA_PORT}/{self.keyspace}"
        self.streams = KafkaStreams(KAFKA_BOOTSTRAP, topic_prefix=self.prefix)
        self.tmp = tmp_path
        self.batch = batch
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.exits: dict[str, list[int]] = {}
        self.starts: dict[str, int] = {}

    def argv(self, service: str, *extra: str) -> list[str]:
        argv = [sys.executable, "-m", "ledger.app.cli", "run", service, "--kafka", KAFKA_BOOTSTRAP,
                "--topic-prefix", self.prefix, "--idle-exit-s", str(IDLE_EXIT_S), "--log-every-s", "2",
                "--batch", str(self.batch), *extra]
        if service == "project":
            argv += ["--store", self.store]
        return argv

    def start(self, service: str, *extra: str, name: str | None = None) -> subprocess.Popen[bytes]:
        name = name or service
        count = self.starts[name] = self.starts.get(name, 0) + 1
        log = open(self.tmp / f"{name}-{count}.log", "wb")  # noqa: SIM115 (the process owns it)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
        process = subprocess.Popen(self.argv(service, *extra), stdout=log, stderr=subprocess.STDOUT, env=env)
        self.processes[name] = process
        return process

    def send(self, commands: list[Any], chunk: int = 5_000) -> None:
        from ledger.app.producer import CommandProducer

        self.streams.create_inputs()
        log = self.streams.commands(writer=True)
        producer = CommandProducer(log)
        for start in range(0, len(commands), chunk):
            producer.send(commands[start : start + chunk])
        log.close()

    def kill(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        self.exits.setdefault(name, []).append(process.wait(timeout=60))

    def wait_all(self, limit_s: float = RUN_S_MAX) -> dict[str, int]:
        deadline = time.monotonic() + limit_s
        codes = {}
        for name, process in self.processes.items():
            codes[name] = process.wait(timeout=max(deadline - time.monotonic(), 1))
        return codes

    def ends(self) -> tuple[int, ...]:
        logs = [self.streams.events()] + [self.streams.outputs(s) for s in self.streams.output_symbols()]
        try:
            return tuple(log.end_offset() for log in logs)
        finally:
            for log in logs:
                log.close()

    def drain(self, rounds_max: int = 5) -> None:
        """Run every service again until a round moves no stream's end: a service that
        went idle while another was down (killed) may have inputs left."""
        for _ in range(rounds_max):
            before = self.ends()
            started = {name: self.start(name) for name in ("ubscore", "engine", "project")}
            codes = {name: process.wait(timeout=RUN_S_MAX) for name, process in started.items()}
            assert set(codes.values()) == {0}, codes
            if self.ends() == before:
                return
        raise AssertionError(f"the streams still moved after {rounds_max} rounds")

    def wait_for(self, done: Callable[[], bool], watched: subprocess.Popen[bytes], name: str, deadline: float) -> None:
        """Poll ``done`` until it holds; fail (with ``name``'s output) if ``watched`` exits
        or ``deadline`` (monotonic) passes first."""
        while not done():
            assert time.monotonic() < deadline and watched.poll() is None, self.output(name)
            time.sleep(0.05)

    def output(self, name: str) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob(f"{name}-*.log")))

    def events_end(self) -> int:
        try:
            log = self.streams.events()
            try:
                return log.end_offset()
            finally:
                log.close()
        except Exception:  # noqa: BLE001 (not created yet)
            return 0

    def outcome(self) -> dict[str, Any]:
        outputs = {s: self.streams.outputs(s) for s in self.streams.output_symbols()}
        events, commands = self.streams.events(), self.streams.commands()
        try:
            return outcome(commands, events, outputs)
        finally:
            for log in [events, commands, *outputs.values()]:
                log.close()

    def audit(self) -> None:
        """Every stream's seqs contiguous (replay and the engine rebuild check that), every
        command answered once, every trade settled once, the projection verified."""
        from ledger.protocol.codec import EVENTS
        from ledger.protocol.events import TradeSettled
        from settlement import verify_store
        from settlement.cql import CqlStore

        events, commands = self.streams.events(), self.streams.commands()
        try:
            answered = []
            settled = set()
            for raw in records(events):
                event = EVENTS.decode(raw)
                if getattr(event, "input_offset", -1) >= 0:
                    answered.append(event.input_offset)
                if type(event) is TradeSettled:
                    key = (event.symbol, event.engine_seq)
                    assert key not in settled, f"trade {key} settled twice"
                    settled.add(key)
            offsets = [o for batch in _scan(commands) for o in batch.offsets]
            assert answered == offsets, "every command answered exactly once, in order"
            store = CqlStore(("127.0.0.1",), CASSANDRA_PORT, self.keyspace, create=False)
            try:
                report = verify_store(store, events, layout.EVENTS)
                assert report.ok, report.differences[:5]
            finally:
                store.close()
        finally:
            events.close()
            commands.close()

    def drop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=60)


def _scan(log: Any) -> Any:
    from ledger.logs.base import scan

    return scan(log)


@pytest.fixture
def pipeline(tmp_path: Path, kafka_bootstrap: str, cassandra_session: Any) -> Any:
    made = Pipeline(tmp_path)
    yield made
    made.drop()
    for _attempt in range(30):  # after a drill the server may be back before the session is
        try:
            cassandra_session.execute(f"DROP KEYSPACE IF EXISTS {made.keyspace}", timeout=30)
            break
        except Exception:  # noqa: BLE001
            time.sleep(2)


def assert_same_as_in_process(got: dict[str, Any]) -> None:
    want = expected()
    assert got["conservation"] == []
    for key in ("balances", "trades", "ends", "filled", "books", "answers", "open"):
        assert got[key] == want[key], key


def test_the_reference_scenarios_through_the_services_into_cassandra(pipeline: Pipeline) -> None:
    """Both reference scenarios in one run, read back from the projection in Cassandra:
    the exact balances and fees of the in-process tests, the trade row, the orders'
    final statuses and no open order."""
    from ledger import Asset, CancelOrder, Deposit, ListAsset, ListSymbol, PlaceOrder, Side
    from settlement import Queries
    from settlement.cql import CqlStore
    from settlement.model import STATUS_CANCELLED, STATUS_FILLED
    from support import BTC, BTC_USDT, USDT

    pipeline.send([
        ListAsset(1, Asset("BTC", 8)), ListAsset(2, Asset("USDT", 6)), ListSymbol(3, BTC_USDT),
        # One trade with exact fees.
        Deposit(1001, 1, "BTC", 1 * BTC), Deposit(1002, 1, "USDT", 20_000 * USDT),
        PlaceOrder(1001, 2, "BTC-USDT", Side.SELL, qty=50, price=150),
        PlaceOrder(1002, 2, "BTC-USDT", Side.BUY, qty=50, price=150),
        # A self-trade: the buy is refused by the book, the sell rests until it is
        # cancelled by its client order id; every lock is released.
        Deposit(2001, 1, "BTC", 1 * BTC), Deposit(2001, 2, "USDT", 1_000 * USDT),
        PlaceOrder(2001, 3, "BTC-USDT", Side.SELL, qty=1, price=50_000),
        PlaceOrder(2001, 4, "BTC-USDT", Side.BUY, qty=1, price=50_000),
        CancelOrder(2001, 5, 0, order_request_id=3),
    ])
    for name in ("ubscore", "engine", "project"):
        pipeline.start(name)
    assert set(pipeline.wait_all().values()) == {0}
    pipeline.drain()
    store = CqlStore(("127.0.0.1",), CASSANDRA_PORT, pipeline.keyspace, create=False)
    try:
        q = Queries(store)
        assert q.balances(1001) == {"BTC": (BTC // 2, 0), "USDT": (75 * USDT - 75_000, 0)}
        assert q.balances(1002) == {"BTC": (BTC // 2 - 100_000, 0), "USDT": (20_000 * USDT - 75 * USDT, 0)}
        assert q.balances(0) == {"BTC": (100_000, 0), "USDT": (75_000, 0)}
        assert q.balances(2001) == {"BTC": (BTC, 0), "USDT": (1_000 * USDT, 0)}
        (trade,) = q.recent_trades("BTC-USDT")
        assert (trade["price"], trade["qty"], trade["maker_user"], trade["taker_user"]) == (150, 50, 1001, 1002)
        assert (trade["maker_fee"], trade["taker_fee"], trade["taker_refund"]) == (75_000, 100_000, 0)
        for order_id in (trade["maker_order_id"], trade["taker_order_id"]):
            order = q.order(order_id)
            assert order is not None and (order["status"], order["filled_qty"]) == (STATUS_FILLED, 50), order
        assert q.open_orders(1001) == q.open_orders(1002) == q.open_orders(2001) == []
        own = [r for r in store.scan("orders") if r["user"] == 2001]
        assert len(own) == 2 and all(r["status"] == STATUS_CANCELLED and r["filled_qty"] == 0 for r in own), own
    finally:
        store.close()
    pipeline.audit()


def test_a_planned_workload_through_the_services_ends_as_in_the_in_process_exchange(pipeline: Pipeline) -> None:
    commands = list(workload())
    pipeline.send(commands)
    pipeline.start("ubscore")
    pipeline.start("engine")
    pipeline.start("project")
    codes = pipeline.wait_all()
    assert codes == {"ubscore": 0, "engine": 0, "project": 0}, pipeline.output("ubscore") + pipeline.output("engine")
    assert_same_as_in_process(pipeline.outcome())
    pipeline.audit()


def test_every_service_killed_three_times_at_random_points_ends_the_same(pipeline: Pipeline) -> None:
    """SIGKILL each service at least three times, at points chosen by progress (the end
    of balance.events), and restart it at once: the same final equality."""
    commands = list(workload())
    pipeline.send(commands)
    rng = random.Random(17)
    final = expected()
    total = sum(1 for _ in final["answers"]) + sum(len(t) for t in final["trades"].values())
    targets = sorted((rng.randrange(total // 10, total * 9 // 10), name)
                     for name in ("ubscore", "engine", "project") for _ in range(3))
    for name in ("ubscore", "engine", "project"):
        pipeline.start(name)
    deadline = time.monotonic() + KILL_WAIT_S_MAX
    for target, name in targets:
        while pipeline.events_end() < target and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.05))
        pipeline.kill(name)
        pipeline.start(name)
    codes = pipeline.wait_all()
    assert codes == {"ubscore": 0, "engine": 0, "project": 0}, pipeline.output("ubscore")
    kills = {name: len(exits) for name, exits in pipeline.exits.items()}
    assert kills == {"ubscore": 3, "engine": 3, "project": 3}
    pipeline.drain()
    assert_same_as_in_process(pipeline.outcome())
    pipeline.audit()


def test_two_engines_hosting_the_same_symbol_fence_never_fork(pipeline: Pipeline) -> None:
    """Every step waits for the state it needs, never for a time: UBSCore runs until it is
    stopped, the second engine has claimed the stream before more commands come, and the
    first meets that claim on its next commit, since those commands trade its symbol."""
    commands = list(workload())[:6_000]
    pipeline.send(commands[:3_000])
    ubscore = pipeline.start("ubscore", "--idle-exit-s", "0")
    first = pipeline.start("engine", "--symbol", "BTC-USDT", "--idle-exit-s", "0", name="engine-a")
    deadline = time.monotonic() + KILL_WAIT_S_MAX
    pipeline.wait_for(lambda: _output_end_over(pipeline, "BTC-USDT", 10), first, "engine-a", deadline)
    second = pipeline.start("engine", "--symbol", "BTC-USDT", name="engine-b")
    # Logged once it has claimed the stream.
    pipeline.wait_for(lambda: "engine: hosting BTC-USDT" in pipeline.output("engine-b"), second, "engine-b", deadline)
    pipeline.send(commands[3_000:])
    assert first.wait(timeout=RUN_S_MAX) == 2, pipeline.output("engine-a")
    assert "fenced" in pipeline.output("engine-a"), pipeline.output("engine-a")
    ubscore.send_signal(signal.SIGTERM)  # it finishes its batch; the drain answers the rest
    assert ubscore.wait(timeout=RUN_S_MAX) == 0, pipeline.output("ubscore")
    assert second.wait(timeout=RUN_S_MAX) == 0, pipeline.output("engine-b")
    pipeline.drain()  # every service again, all symbols, until no stream moves
    # One stream, not two: it rebuilds (contiguous seqs) and the whole run audits.
    got = pipeline.outcome()
    assert got["conservation"] == []
    want = exchange_outcome(commands)
    for key in ("balances", "trades", "books"):
        assert got[key] == want[key], key


def test_two_ubscores_on_the_same_stream_one_stops_never_a_fork(pipeline: Pipeline) -> None:
    """The second claims the transactional id on start; the first, with commands still to
    answer, stops on its next commit: fenced, or (if the second appended first) finding
    another writer's records at its end. Either way one stream, which replays."""
    commands = list(workload())[:6_000]
    pipeline.send(commands[:3_000])
    first = pipeline.start("ubscore", "--idle-exit-s", "0", name="ubscore-a")
    deadline = time.monotonic() + KILL_WAIT_S_MAX
    pipeline.wait_for(lambda: pipeline.events_end() >= 500, first, "ubscore-a", deadline)
    second = pipeline.start("ubscore", "--idle-exit-s", "0", name="ubscore-b")
    # Logged once it has claimed the transactional id.
    pipeline.wait_for(lambda: "ubscore: resumed at seq" in pipeline.output("ubscore-b"), second, "ubscore-b", deadline)
    pipeline.send(commands[3_000:])
    code = first.wait(timeout=RUN_S_MAX)
    text = pipeline.output("ubscore-a")
    assert (code, "fenced" in text) == (2, True) or (code, "another writer" in text) == (1, True), text
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=RUN_S_MAX) == 0, pipeline.output("ubscore-b")
    pipeline.drain()
    got = pipeline.outcome()
    assert got["conservation"] == []
    want = exchange_outcome(commands)
    for key in ("balances", "trades", "books"):
        assert got[key] == want[key], key


def _output_end_over(pipeline: Pipeline, symbol: str, end: int) -> bool:
    if symbol not in pipeline.streams.output_symbols():
        return False
    log = pipeline.streams.outputs(symbol)
    try:
        return log.end_offset() > end
    finally:
        log.close()


def test_a_foreign_record_on_balance_events_stops_ubscore_naming_it(pipeline: Pipeline) -> None:
    """Hole 2: a plain producer's record landing on balance.events while UBSCore runs was
    taken as UBSCore's own end; it is now found (before or after the commit) and named."""
    from ledger.logs.kafka import KafkaLog

    commands = list(workload())
    pipeline.send(commands[:10_000])
    # It waits for more work (rather than exiting idle) until the test has sent it all.
    ubscore = pipeline.start("ubscore", "--idle-exit-s", "30")
    deadline = time.monotonic() + KILL_WAIT_S_MAX
    while pipeline.events_end() < 2_000 and time.monotonic() < deadline:
        time.sleep(0.01)
    intruder = KafkaLog(KAFKA_BOOTSTRAP, pipeline.prefix + layout.EVENTS)
    intruder.append([b"not UBSCore's"])
    intruder.close()
    pipeline.send(commands[10_000:])  # so an append follows the intruder's record
    code = ubscore.wait(timeout=RUN_S_MAX)
    text = pipeline.output("ubscore")
    assert code == 1 and "another writer" in text, text


def test_an_open_foreign_transaction_is_waited_for_never_appended_past(pipeline: Pipeline) -> None:
    """Hole 1: while another producer's transaction is open on balance.events, a batch
    UBSCore commits stays invisible to read_committed readers, and a restart that replays
    only what it sees appended the same events again. UBSCore now waits for the last
    stable offset to reach the end before it replays or appends."""
    import confluent_kafka

    commands = list(workload())[:2_000]
    pipeline.send(commands)
    pipeline.streams.create_inputs()
    foreign = confluent_kafka.Producer(
        {"bootstrap.servers": KAFKA_BOOTSTRAP, "transactional.id": pipeline.prefix + "foreign"}
    )
    foreign.init_transactions(30)
    foreign.begin_transaction()
    foreign.produce(pipeline.prefix + layout.EVENTS, value=b"held open", partition=0)
    foreign.flush(30)
    ubscore = pipeline.start("ubscore")
    time.sleep(4)
    assert ubscore.poll() is None and pipeline.events_end() <= 2, "nothing appended while the transaction is open"
    foreign.abort_transaction(30)
    assert ubscore.wait(timeout=RUN_S_MAX) == 0, pipeline.output("ubscore")
    assert "last stable offset" in pipeline.output("ubscore")
    events = pipeline.streams.events()
    try:
        from ledger.rebuild import replay

        core = replay(events)  # contiguous seqs: nothing appended twice
        assert core.state.last_input_offset == max(
            o for batch in _scan(pipeline.streams.commands()) for o in batch.offsets
        )
    finally:
        events.close()


def test_commands_producer_writes_the_partition_it_is_given(pipeline: Pipeline) -> None:
    commands = list(workload())[:50]
    pipeline.send(commands)
    log = pipeline.streams.commands()
    try:
        assert [COMMANDS.decode(r) for r in records(log)] == commands
        assert log.partition == 0
    finally:
        log.close()


# -- outages: the suite's servers stopped and started again in the middle ---------------

# The outage drills run a shorter stretch of the same plan (a prefix of a planned workload
# is one too: every cancel names an earlier order, the deposits cover more than it needs).
OUTAGE_COMMANDS = 12_000


@functools.cache
def outage_expected() -> dict[str, Any]:
    return exchange_outcome(list(workload())[:OUTAGE_COMMANDS])


def _servers(*args: str) -> None:
    subprocess.run(["bash", str(ROOT / "scripts" / "services.sh"), *args], check=True, timeout=600,
                   stdout=subprocess.DEVNULL)


@pytest.fixture
def servers_restored() -> Any:
    """Whatever a drill did to the servers, they serve again when it ends."""
    yield
    _servers("up")


def _outage_run(pipeline: Pipeline, interrupt: Any) -> None:
    commands = list(workload())[:OUTAGE_COMMANDS]
    pipeline.send(commands)
    for name in ("ubscore", "engine", "project"):
        pipeline.start(name)
    deadline = time.monotonic() + KILL_WAIT_S_MAX
    while pipeline.events_end() < len(commands) // 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    interrupt()
    codes = pipeline.wait_all()
    assert set(codes.values()) == {0}, {n: pipeline.output(n)[-2_000:] for n in codes}
    pipeline.drain()
    got, want = pipeline.outcome(), outage_expected()
    assert got["conservation"] == []
    for key in ("balances", "trades", "ends", "filled", "books", "answers", "open"):
        assert got[key] == want[key], key
    pipeline.audit()


def test_a_kafka_outage_in_the_middle_is_ridden_out(pipeline: Pipeline, servers_restored: None) -> None:
    def outage() -> None:
        _servers("down", "kafka")
        time.sleep(3)
        _servers("up", "kafka")

    _outage_run(pipeline, outage)
    logs = pipeline.output("ubscore") + pipeline.output("engine") + pipeline.output("project")
    assert "retry" in logs, "the outage was never noticed: the drill proved nothing"


def test_cassandra_killed_in_the_middle_is_ridden_out(pipeline: Pipeline, servers_restored: None) -> None:
    """SIGKILL, not a clean stop: with its default periodic commit log Cassandra loses
    acknowledged writes (a checkpoint among them); the projector re-folds from what the
    store still has, judged by seq, and the projection verifies in the end."""
    pid_file = ROOT / ".services" / "cassandra.pid"

    def outage() -> None:
        os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
        time.sleep(2)
        _servers("up", "cassandra")

    _outage_run(pipeline, outage)
    assert "retry" in pipeline.output("project"), "the projector never noticed the outage"
