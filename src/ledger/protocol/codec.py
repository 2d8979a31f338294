"""msgpack encoding of commands and events, strict on the way in.

msgpack integers stop at 64 bits, but amounts go up to ``AMOUNT_MAX`` (2**127 - 1). A
record holding an integer outside the signed/unsigned 64-bit range is written whole as
msgpack extension type ``WIDE_RECORD_EXT``: its payload is the same record (the same
tagged array) in msgspec's JSON, which holds integers of any size. Both forms go through
msgspec's typed encoder and decoder, so a record with a big amount is checked by the same
schema in C as any other, exactly as strictly (it still costs a few times an ordinary
record: the encoder's refusal is an exception; see docs/benchmarks.md). Each record
says which form it is in (its first byte), so no reader needs a header to tell.

Schema 2 and before wrote each big integer on its own as extension type ``BIG_INT_EXT``
(two's-complement big-endian bytes) inside an ordinary record; those records still decode
exactly, by a slower path. Decoding never coerces: a float, a string or a bool where an
int belongs, an unknown tag or extension type, or truncated bytes raise ``DecodeError``
naming where the record was.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Generic, TypeVar, Union

import msgspec

from ledger.protocol.commands import COMMAND_TYPES, Command
from ledger.protocol.events import BalanceEvent
from ledger.protocol.limits import COMMAND_BYTES_MAX, INT64_MAX
from ledger.protocol.outputs import EngineOutput

# Read only: one integer beyond 64 bits, inside a record of schema 2 or before.
BIG_INT_EXT = 1
# A whole record holding an integer beyond 64 bits (schema 3 on), as msgspec JSON.
WIDE_RECORD_EXT = 2
# Valid amounts need at most 16 bytes (2**127 - 1). Commands may carry larger, invalid
# amounts that UBSCore must reject and record, so the wire allows integers of up to 32
# bytes (two's complement) in either form; the encoder refuses anything longer rather
# than write a record no reader accepts.
BIG_INT_BYTES_MAX = 32
_BIG_INT_MIN = -(2 ** (8 * BIG_INT_BYTES_MAX - 1))
_BIG_INT_MAX = 2 ** (8 * BIG_INT_BYTES_MAX - 1) - 1

_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1
_Ext = msgspec.msgpack.Ext

T = TypeVar("T")


class DecodeError(ValueError):
    """A record could not be decoded. ``where`` names the log and offset."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


class CommandError(ValueError):
    """A command that breaks the schema (a field of the wrong type or out of its range,
    or the whole too large), refused where it enters. ``field`` names the field
    (``asset.decimals`` for a nested one; ``""`` for the command as a whole)."""

    def __init__(self, kind: str, field: str, problem: str) -> None:
        where = f"{kind}.{field}" if field else kind
        super().__init__(f"{where}: {problem}")
        self.kind = kind
        self.field = field
        self.problem = problem


def _ext_to_int(code: int, data: memoryview) -> int:
    if code != BIG_INT_EXT:
        raise ValueError(f"unknown msgpack extension type {code}")
    if not 0 < len(data) <= BIG_INT_BYTES_MAX:
        raise ValueError(f"big integer of {len(data)} bytes (at most {BIG_INT_BYTES_MAX})")
    return int.from_bytes(data, "big", signed=True)


class _WideFields:
    """Where a record of one type may hold an integer beyond 64 bits: its int fields with
    no 64-bit bound (read together by ``ints``) and its fields that hold records."""

    __slots__ = ("names", "ints", "nested")

    def __init__(self, kind: type) -> None:
        names: list[str] = []
        nested: list[str] = []
        for field in msgspec.inspect.type_info(kind).fields:  # type: ignore[attr-defined]
            types = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
            for member in types:
                if isinstance(member, msgspec.inspect.IntType) and (member.le is None or member.le > INT64_MAX):
                    names.append(field.name)
                elif isinstance(member, msgspec.inspect.StructType):
                    nested.append(field.name)
                    break
        self.names = tuple(names)
        # attrgetter of one name returns the value, of several a tuple: always a tuple.
        self.ints: Callable[[Any], tuple[Any, ...]] = (
            attrgetter(*names) if len(names) > 1 else (lambda record: (getattr(record, names[0]),)) if names
            else (lambda record: ())
        )
        self.nested = tuple(nested)


_WIDE_FIELDS: dict[type, _WideFields] = {}


def _oversized_int(value: Any, where: str = "") -> str:
    """What names an integer in ``value`` (an int or a record, looked into where the
    schema allows integers beyond 64 bits) longer than ``BIG_INT_BYTES_MAX`` bytes, or ''."""
    if type(value) is int:
        if _BIG_INT_MIN <= value <= _BIG_INT_MAX:
            return ""
        size = (value.bit_length() + 8) // 8
        return f"{where or 'integer'}: integer of {size} bytes (at most {BIG_INT_BYTES_MAX})"
    kind = type(value)
    fields = _WIDE_FIELDS.get(kind)
    if fields is None:
        if not isinstance(value, msgspec.Struct):
            return ""
        fields = _WIDE_FIELDS[kind] = _WideFields(kind)
    ints = fields.ints(value)
    try:
        fits = not ints or (max(ints) <= _BIG_INT_MAX and min(ints) >= _BIG_INT_MIN)
    except TypeError:  # a badly typed field beside a big one: look at each
        fits = False
    if not fits:
        for name, item in zip(fields.names, ints, strict=True):
            problem = _oversized_int(item, f"{where}{name}") if type(item) is int else ""
            if problem:
                return problem
    for name in fields.nested:
        problem = _oversized_int(getattr(value, name), f"{where}{name}.")
        if problem:
            return problem
    return ""


class Codec(Generic[T]):
    """Encoder and strict decoder for one record union (commands, events, outputs)."""

    def __init__(self, union: Any, name: str) -> None:
        self.union = union
        self.name = name
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(union)
        # The same, but a record in the wide form comes back as its Ext instead of raising:
        # a raise and catch costs more than decoding a record.
        self._decoder_or_wide = msgspec.msgpack.Decoder(Union[union, _Ext])  # noqa: UP007
        self._wide_encoder = msgspec.json.Encoder()
        self._wide_decoder = msgspec.json.Decoder(union)
        # Records are tagged arrays whose first element names the type. Converting to
        # that one class is about 8x faster than converting to the whole union (msgspec
        # re-examines a Union on every convert call): 0.85 us against 7 us a record.
        self._by_tag: dict[str, type] = {
            msgspec.inspect.type_info(member).tag: member  # type: ignore[attr-defined]
            for member in union.__args__
        }

    def encode(self, record: T) -> bytes:
        """Encode one record to msgpack bytes (the wide form if it holds an integer beyond
        64 bits); ``ValueError`` if an integer is too long for any reader."""
        try:
            return self._encoder.encode(record)
        except OverflowError:
            problem = _oversized_int(record)
            if problem:
                raise ValueError(f"{problem} cannot be encoded") from None
            return self._encoder.encode(_Ext(WIDE_RECORD_EXT, self._wide_encoder.encode(record)))

    @property
    def decode_plain(self) -> Callable[[bytes | memoryview], T]:
        """msgspec's typed decoder alone: it decodes every record in the ordinary form and
        raises ``msgspec.MsgspecError`` on the rest; pass those to ``decode_after`` (the
        other forms, or the error naming ``where``). Saves a Python call per record over
        ``decode``; loops over logs that hold many wide records want ``decode_or_wide``."""
        return self._decoder.decode  # type: ignore[no-any-return]

    @property
    def decode_or_wide(self) -> Callable[[bytes | memoryview], T | msgspec.msgpack.Ext]:
        """Like ``decode_plain``, but a record in the wide form (or any extension at the
        top) comes back as its ``msgspec.msgpack.Ext``, without an exception: finish it
        with ``decode_wide``. Raises ``msgspec.MsgspecError`` on the rest, for
        ``decode_after``."""
        return self._decoder_or_wide.decode  # type: ignore[no-any-return]

    def decode(self, data: bytes | memoryview, where: str = "record") -> T:
        """Decode one record; raise ``DecodeError`` (naming ``where``) if it is not one."""
        try:
            record = self._decoder_or_wide.decode(data)
        except msgspec.MsgspecError as error:
            return self.decode_after(data, where, error)
        if type(record) is _Ext:
            return self.decode_wide(record, where)
        return record  # type: ignore[no-any-return]

    def decode_wide(self, ext: msgspec.msgpack.Ext, where: str = "record") -> T:
        """Decode a record in the wide form from its extension (``decode_or_wide`` gives
        it); raise ``DecodeError`` naming ``where`` if it is not one."""
        if ext.code != WIDE_RECORD_EXT:
            raise DecodeError(where, f"not a valid {self.name}: unknown msgpack extension type {ext.code}")
        try:
            record = self._wide_decoder.decode(ext.data)
        except msgspec.MsgspecError as error:
            raise DecodeError(where, f"not a valid {self.name}: {error}") from None
        problem = _oversized_int(record)
        if problem:
            raise DecodeError(where, f"not a valid {self.name}: {problem}")
        return record  # type: ignore[no-any-return]

    def decode_after(self, data: bytes | memoryview, where: str, error: msgspec.MsgspecError) -> T:
        """Finish decoding a record the typed decoder refused with ``error``: a record in
        the wide form, or of schema 2 or before with a big integer, is decoded exactly;
        anything else raises ``DecodeError``."""
        if isinstance(error, msgspec.ValidationError):
            if "got `ext`" in str(error):
                try:
                    wide = self._decoder_or_wide.decode(data)
                except msgspec.MsgspecError:
                    return self._decode_big(data, where)
                if type(wide) is _Ext:
                    return self.decode_wide(wide, where)
                return wide  # type: ignore[no-any-return]
            raise DecodeError(where, f"not a valid {self.name}: {error}") from None
        raise DecodeError(where, f"malformed {self.name} bytes: {error}") from None

    def _decode_big(self, data: bytes | memoryview, where: str) -> T:
        try:
            raw = msgspec.msgpack.decode(data, ext_hook=_ext_to_int)
            kind = self._by_tag.get(raw[0]) if type(raw) is list and raw and type(raw[0]) is str else None
            if kind is None:
                # Not one of ours: let the union produce msgspec's own explanation.
                return msgspec.convert(raw, self.union, strict=True)  # type: ignore[no-any-return]
            return msgspec.convert(raw, kind, strict=True)  # type: ignore[no-any-return]
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as error:
            raise DecodeError(where, f"not a valid {self.name}: {error}") from None


COMMANDS: Codec[Command] = Codec(Command, "command")
EVENTS: Codec[BalanceEvent] = Codec(BalanceEvent, "balance event")
OUTPUTS: Codec[EngineOutput] = Codec(EngineOutput, "engine output")


_PATH = re.compile(r" - at `\$((?:\[\d+\])*)`$")


def _field_path(kind: type, indexes: list[int]) -> str:
    """The dotted field name at ``indexes`` of an array-like record (a tagged one's first
    element is its tag)."""
    names: list[str] = []
    current: Any = kind
    tagged = True
    for index in indexes:
        fields = msgspec.structs.fields(current) if isinstance(current, type) else ()
        position = index - 1 if tagged else index
        if not 0 <= position < len(fields):
            names.append(f"[{index}]")
            break
        names.append(fields[position].name)
        current = fields[position].type
        tagged = False
    return ".".join(names)


def _unencodable_field(record: Any) -> str:
    for field in msgspec.structs.fields(record):
        try:
            COMMANDS.encode(getattr(record, field.name))
        except (TypeError, ValueError):
            return field.name
    return ""


def check_command(command: Command) -> bytes:
    """The encoded ``command`` if it keeps the schema; else ``CommandError`` naming the
    field. The check is the strict decoder itself, run over the encoding, so it is the
    same rule that guards every reader of balance.operations."""
    return checked_command(command)[0]


def checked_command(command: Command) -> tuple[bytes, Command]:
    """``check_command``'s bytes with the command decoded back from them: exactly what
    a reader of the log gets (plain ints where the caller may have passed an int
    subclass, enum members where it passed ints), so a live path that decides on it
    answers as a replay of the log would."""
    kind = type(command)
    if kind not in COMMAND_TYPES:
        raise CommandError(kind.__name__, "", f"not a command (one of {', '.join(t.__name__ for t in COMMAND_TYPES)})")
    try:
        data = COMMANDS.encode(command)
    except (TypeError, ValueError) as error:
        raise CommandError(kind.__name__, _unencodable_field(command), f"cannot be encoded: {error}") from None
    if len(data) > COMMAND_BYTES_MAX:
        raise CommandError(kind.__name__, "", f"{len(data)} bytes encoded, over COMMAND_BYTES_MAX {COMMAND_BYTES_MAX}")
    try:
        decoded = COMMANDS.decode(data)
    except DecodeError as error:
        match = _PATH.search(error.problem)
        field = _field_path(kind, [int(i) for i in re.findall(r"\d+", match.group(1))]) if match else ""
        problem = _PATH.sub("", error.problem).removeprefix("not a valid command: ")
        raise CommandError(kind.__name__, field, problem) from None
    return data, decoded
