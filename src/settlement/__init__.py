"""Settlement: projects balance.events and engine.outputs into a queryable store.

Not built yet: the projector, its SQLite and CQL stores and gap detection come next.
"""
