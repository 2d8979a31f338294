"""The gateway's named limits and defaults (no imports: the command line reads them
without loading the web stack)."""

from __future__ import annotations

# How long a command waits for UBSCore's answer before the gateway answers 202.
ANSWER_TIMEOUT_S_DEFAULT = 5.0
# How long a read waits for the projection to reach the min_seq it asks for (then 504).
READ_WAIT_S_DEFAULT = 10.0
# Health: the projection may lag balance.events by at most this many records.
HEALTH_LAG_MAX_DEFAULT = 10_000
# A request's timestamp may be this far from the gateway's clock, either way.
RECV_WINDOW_MS_DEFAULT = 5_000
# Per key: a trading bot's steady rate, and the burst it may send at once.
RATE_LIMIT_PER_S_DEFAULT = 20.0
RATE_BURST_DEFAULT = 40
# An idle HTTP connection is kept open this long. Longer than the idle time after which
# clients' pools drop a connection (httpx: 5 s; ledger.client: CONNECTION_IDLE_S): a
# server closing a connection at the moment its client reuses it fails that request
# with no answer (seen under load with both at 5 s).
KEEP_ALIVE_S = 30
