"""The webhook outbox: events queued by entity actors with the state change they report,
claimed under leases, rendered, signed and delivered at least once.

events: the Event type the actors write; store: the Redis side (claim scripts);
render: an event's JSON body; signing: the Opay-Signature header; delivery: the loop.
"""
