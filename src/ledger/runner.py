"""Run UBSCore as a stage: commands in (balance.operations), events out (balance.events).

Exactly-once in effect, after any crash:

* The stage's state is the fold of its own output: on start it replays balance.events
  (optionally from a snapshot) and resumes the command log just after the last
  ``input_offset`` its events record. Nothing else is trusted for the resume position.
* The events of one batch of commands are appended as one atomic batch: a file-log batch
  or a Kafka transaction. A crash before the append loses the batch's effects, which the
  restart recomputes; a crash after it leaves them, and the restart skips their inputs.
  Either way every command has its effect exactly once.
* Before appending, a stage checks that the output log still ends where its state does;
  if another writer appended meanwhile it stops (``SequenceError``) instead of forking
  the stream. On Kafka the transactional id also fences an older instance.

    python -m ledger.runner --commands DIR --events DIR [--batch N] [--until-end]
    python -m ledger.runner --kafka HOST:PORT --commands-topic T --events-topic T ...
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from ledger.codec import COMMANDS, EVENTS, DecodeError
from ledger.gctune import relaxed_gc
from ledger.log import Log
from ledger.replay import replay
from ledger.ubscore import SequenceError

# Commands per output batch: one append (one fsync or one transaction) each. Bigger
# batches amortise the commit; smaller ones lower the latency of each answer.
BATCH_COMMANDS_DEFAULT = 500
# A following stage polls an idle input this often.
IDLE_POLL_S = 0.05


class UBSCoreStage:
    """UBSCore between a command log and its event log."""

    def __init__(self, commands: Log, events: Log, snapshot: bytes | None = None) -> None:
        self.commands = commands
        self.events = events
        fence = getattr(events, "producer", None)
        if fence is not None:
            # Kafka: claim the transactional id first. That fences any older instance and
            # aborts the transaction it left open, which would otherwise hold back every
            # read_committed read of the topic (and so this stage's own replay).
            fence()
        self.core = replay(events, snapshot=snapshot)
        self.next_input = self.core.state.last_input_offset + 1
        self.output_end = events.end_offset()

    def step(self, batch_commands: int = BATCH_COMMANDS_DEFAULT) -> int:
        """Handle up to ``batch_commands`` commands; return how many were handled."""
        batch = self.commands.read(self.next_input, batch_commands)
        if not batch.values:
            return 0
        produced = []
        for offset, raw in zip(batch.offsets, batch.values, strict=True):
            try:
                command = COMMANDS.decode(raw)
            except DecodeError as error:
                raise DecodeError(f"{self.commands.name} offset {offset}", error.problem) from None
            produced.extend(self.core.execute(command, offset))
        end = self.events.end_offset()
        if end != self.output_end:
            raise SequenceError(
                f"{self.events.name} grew from offset {self.output_end} to {end} behind this stage's back: "
                "another writer is running; stopping rather than forking the stream"
            )
        self.events.append([EVENTS.encode(e) for e in produced])
        self.output_end = self.events.end_offset()
        self.next_input = batch.next_offset
        return len(batch.values)

    @relaxed_gc()
    def run(self, batch_commands: int = BATCH_COMMANDS_DEFAULT, follow: bool = False, idle_s_max: float = 0.0) -> int:
        """Handle commands until the input is exhausted (or, following, until idle for
        ``idle_s_max`` seconds; 0 = forever). Returns how many were handled."""
        handled = 0
        idle_since = time.monotonic()
        while True:
            count = self.step(batch_commands)
            handled += count
            if count:
                idle_since = time.monotonic()
                continue
            if not follow or (idle_s_max and time.monotonic() - idle_since > idle_s_max):
                return handled
            time.sleep(IDLE_POLL_S)


def _open_logs(args: argparse.Namespace) -> tuple[Log, Log]:
    if args.kafka:
        from ledger.kafkalog import KafkaLog, ensure_topic

        ensure_topic(args.kafka, args.events_topic)
        commands = KafkaLog(args.kafka, args.commands_topic)
        events = KafkaLog(args.kafka, args.events_topic, transactional_id=f"ubscore-{args.events_topic}-0")
        return commands, events
    from ledger.filelog import FileLog, FsyncPolicy

    return FileLog(args.commands, readonly=True), FileLog(args.events, fsync=FsyncPolicy(args.fsync))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the UBSCore stage from the command line."""
    parser = argparse.ArgumentParser(prog="python -m ledger.runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", help="file log of balance.operations")
    parser.add_argument("--events", help="file log of balance.events")
    parser.add_argument("--fsync", choices=["always", "never"], default="always")
    parser.add_argument("--kafka", help="bootstrap servers; use topics instead of file logs")
    parser.add_argument("--commands-topic", default="balance.operations")
    parser.add_argument("--events-topic", default="balance.events")
    parser.add_argument("--batch", type=int, default=BATCH_COMMANDS_DEFAULT)
    parser.add_argument("--follow", action="store_true", help="keep polling for new commands")
    parser.add_argument("--idle-exit-s", type=float, default=0.0, help="with --follow: exit after this idle time")
    args = parser.parse_args(argv)
    if not args.kafka and not (args.commands and args.events):
        parser.error("give --commands and --events, or --kafka")
    commands, events = _open_logs(args)
    try:
        stage = UBSCoreStage(commands, events)
        handled = stage.run(args.batch, follow=args.follow, idle_s_max=args.idle_exit_s)
    finally:
        commands.close()
        events.close()
    print(f"handled {handled} commands; events end at seq {stage.core.state.seq}; hash {stage.core.state_hash()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
