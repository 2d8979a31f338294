"""UBSCore's periodic snapshots, as the service keeps them: a directory of files, each a
verified state snapshot (``ledger.ubscore.snapshots``) tied to the balance.events
record it was taken after.

A snapshot only shortens a restart; the log stays the truth. Each file names the seq it
was taken at and the blake2b-256 digest of the balance.events record with that seq. The
service finds that record by a search over seqs (never offset = seq - 1: transaction
markers leave holes in offsets), checks the digest and replays the tail from the next
offset. A file that is damaged, from another stream, or ahead of the log is passed over
with a warning naming why, and the next older one tried; with none left, the state is
rebuilt from the whole log; a file passed over is renamed ``*.passed-over``. Files are
written whole or not at all (a temporary file, fsync, rename, fsync of the directory),
and only the newest ``SNAPSHOTS_KEPT`` stay.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import msgspec

from ledger.ubscore.state import SnapshotError

SERVICE_SNAPSHOT_FORMAT = "ubscore-service-snapshot"
# Events between two snapshots of the UBSCore service, unless told otherwise.
SNAPSHOT_EVERY_EVENTS_DEFAULT = 200_000
# Snapshot files kept; older ones are removed after a new one is written.
SNAPSHOTS_KEPT = 3
log = logging.getLogger("ledger.services")
_NAME = re.compile(r"^ubscore-(\d{20})\.snapshot$")


class _Seq(msgspec.Struct):
    seq: int


class _File(msgspec.Struct, frozen=True):
    format: str
    stream: str
    seq: int
    record_digest: str
    snapshot: msgspec.Raw


@dataclass(frozen=True)
class SavedSnapshot:
    """One snapshot file, read and checked for form (not yet against the log)."""

    path: Path
    stream: str
    seq: int
    record_digest: str
    snapshot: bytes


def record_digest(record: bytes) -> str:
    """blake2b-256 of one encoded balance.events record, hex."""
    return hashlib.blake2b(record, digest_size=32).hexdigest()


class SnapshotDir:
    """The snapshot files of one UBSCore service, in ``path`` (made if missing)."""

    def __init__(self, path: str | os.PathLike[str], kept: int = SNAPSHOTS_KEPT) -> None:
        if kept < 1:
            raise ValueError(f"kept {kept} must be at least 1")
        self.path = Path(path)
        self.kept = kept
        if self.path.exists() and not self.path.is_dir():
            raise SnapshotError(f"snapshot directory {self.path} is not a directory")

    def files(self) -> list[Path]:
        """The snapshot files, newest (highest seq) first."""
        if not self.path.is_dir():
            return []
        found = [p for p in self.path.iterdir() if _NAME.match(p.name)]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def save(self, stream: str, state_snapshot: bytes, seq: int, last_record: bytes) -> Path:
        """Write a snapshot taken at ``seq``, whose balance.events record is
        ``last_record``, and remove all but the newest ``kept``. Returns its path."""
        self.path.mkdir(parents=True, exist_ok=True)
        body = msgspec.json.encode(
            _File(SERVICE_SNAPSHOT_FORMAT, stream, seq, record_digest(last_record), msgspec.Raw(state_snapshot))
        )
        final = self.path / f"ubscore-{seq:020d}.snapshot"
        temporary = final.with_name(final.name + ".tmp")
        with open(temporary, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        self._sync_dir()
        for old in self.files()[self.kept :]:
            if old != final:
                old.unlink(missing_ok=True)
        return final

    def set_aside(self, path: Path) -> None:
        """Rename a snapshot the log did not confirm to ``*.passed-over``: kept for a
        look, never read again, never counted among the newest (best effort)."""
        try:
            os.replace(path, path.with_name(path.name + ".passed-over"))
        except OSError as error:
            log.warning("snapshot %s not set aside: %s", path, error.strerror or error)

    def read(self, path: Path) -> SavedSnapshot:
        """One file, checked for form; ``SnapshotError`` says what is wrong with it (the
        caller names the file)."""
        try:
            data = path.read_bytes()
        except OSError as error:
            raise SnapshotError(f"cannot read: {error.strerror or error}") from None
        try:
            got = msgspec.json.decode(data, type=_File)
        except msgspec.MsgspecError as error:
            raise SnapshotError(f"not a UBSCore service snapshot: {error}") from None
        if got.format != SERVICE_SNAPSHOT_FORMAT:
            raise SnapshotError(f"format {got.format!r} is not {SERVICE_SNAPSHOT_FORMAT!r}")
        match = _NAME.match(path.name)
        if match is None or int(match.group(1)) != got.seq:
            raise SnapshotError(f"its name does not give its seq {got.seq}")
        try:
            inner = msgspec.json.decode(got.snapshot, type=_Seq).seq
        except msgspec.MsgspecError as error:
            raise SnapshotError(f"its state is not a snapshot: {error}") from None
        if inner != got.seq:
            raise SnapshotError(f"its state is at seq {inner}, not {got.seq}")
        return SavedSnapshot(path, got.stream, got.seq, got.record_digest, bytes(got.snapshot))

    def _sync_dir(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = [
    "SERVICE_SNAPSHOT_FORMAT",
    "SNAPSHOTS_KEPT",
    "SNAPSHOT_EVERY_EVENTS_DEFAULT",
    "SavedSnapshot",
    "SnapshotDir",
    "record_digest",
]
