"""The wiring: everything that puts the parts together into a running exchange.

The in-process exchange (``ledger.app.exchange``), the UBSCore stage (``ledger.app.stage``),
the demo (``ledger.app.demo``) and the ``ledger`` command line (``ledger.app.cli``). This
is the only layer that knows both UBSCore and the matching engine, and nothing below
imports it.
"""
