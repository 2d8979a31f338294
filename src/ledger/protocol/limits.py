"""Every limit the ledger enforces, in one place, each with the reason it exists.

Names carry units, most significant word first. Changing a limit that is part of the
replayed state (the request window) changes what a replay produces, so such a limit is
recorded in snapshots and must stay the same for the life of a stream.
"""

from __future__ import annotations

# Money. CQL's varint holds any integer, but we bound amounts so that an 18-decimal token
# with a supply in the billions fits, and so a corrupt record cannot carry an absurd value.
AMOUNT_MAX = 2**127 - 1

# Fees are parts per million of the amount a user receives; 1,000,000 would take it all.
FEE_PPM_MAX = 1_000_000
PPM = 1_000_000

# User ids and order ids are unsigned 63-bit integers so they fit a signed 64-bit column
# in every database and a msgpack int. User 0 is the fee account of each shard.
USER_ID_MAX = 2**63 - 1
FEE_ACCOUNT_USER = 0
REQUEST_ID_MAX = 2**63 - 1

# An order's quantity is whole lots and its price whole ticks. The products qty * lot and
# qty * price * tick must stay within AMOUNT_MAX; decide() checks the products themselves.
ORDER_QTY_LOTS_MAX = 2**63 - 1
ORDER_PRICE_TICKS_MAX = 2**63 - 1

# Every integer field of a record that is not an amount (ids, seqs, offsets, quantities,
# prices, timestamps) fits a signed 64-bit integer: a BIGINT column in every database and
# a plain msgpack int. The strict decoder refuses a wider one, so none reaches a log.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# A command is a short request: a few ids, a code or two and some amounts, far below a
# kilobyte. The bound keeps a client's bug from writing megabytes to balance.operations,
# and keeps UBSCore's answer to any command (which never quotes more than the command)
# far below RECORD_BYTES_MAX.
COMMAND_BYTES_MAX = 4096

# Order ids are assigned by UBSCore: (shard << ORDER_ID_SHARD_SHIFT) | seq, so they are
# unique across shards without coordination and an order id names the shard that owns it.
ORDER_ID_SHARD_SHIFT = 48
SHARDS_MAX = 2**14

# How many (user, request_id) pairs UBSCore remembers to answer retries with the original
# outcome. A retry older than this window is treated as a new request. Memory cost is
# about 200 bytes an entry; the default covers minutes of traffic at full speed.
REQUEST_WINDOW_DEFAULT = 100_000

# Amends of one order accepted by UBSCore and not yet answered by the matching engine. Each
# is remembered with its order until the engine answers (its state and its lock depend on
# them), so the bound keeps one order's state small; a client needs one or two in flight.
ORDER_AMENDS_PENDING_MAX = 8

# Asset codes and symbol names are short printable identifiers.
ASSET_CODE_CHARS_MAX = 16
SYMBOL_NAME_CHARS_MAX = 32
ASSET_DECIMALS_MAX = 36

# File log. A segment rolls over at this size so recovery scans at most one segment and
# old segments can be archived whole. A record over the maximum is refused, not split.
SEGMENT_BYTES_MAX = 64 * 1024 * 1024
RECORD_BYTES_MAX = 1024 * 1024
# How many records a read returns at most, so a replay never holds a whole log in memory.
READ_RECORDS_MAX = 65_536
# One index entry every this many records keeps seeks cheap and the index small.
INDEX_STRIDE_RECORDS = 4096

# The cyclic garbage collector runs a young-generation pass every this many container
# allocations while the ledger's hot loops run (CPython's default is 700). The state is
# lists and tuples of ints and strings with no reference cycles, yet each pass costs time
# in proportion to what it walks: at the default, collection took about a third of a
# replay (measured in docs/benchmarks.md). Raised only inside ``relaxed_gc``.
GC_YOUNG_THRESHOLD = 50_000
