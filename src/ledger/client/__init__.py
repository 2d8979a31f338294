"""A Python client of the HTTP gateway (``ledger run gateway``), on httpx."""
