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

    ledger run ubscore --commands DIR --events DIR [--batch N] [--follow [--idle-exit-s S]]
    ledger run ubscore --kafka HOST:PORT [--commands-topic T] [--events-topic T] ...
"""

from __future__ import annotations

import time

from ledger.gctune import relaxed_gc
from ledger.logs.base import Log
from ledger.protocol.codec import EVENTS
from ledger.rebuild import replay
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
            produced.extend(self.core.execute_record(raw, offset))
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
