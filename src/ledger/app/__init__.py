"""The wiring: everything that puts the parts together into a running exchange.

The in-process exchange (``ledger.app.exchange``), the services that run the exchange one
per process over file logs or Kafka (``ledger.app.services``, on the streams of
``ledger.app.streams``), the command producer (``ledger.app.producer``), the demo
(``ledger.app.demo``) and the ``ledger`` command line (``ledger.app.cli``). This
is the only layer that knows both UBSCore and the matching engine, and nothing below
imports it.
"""
