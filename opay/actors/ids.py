"""Entity ids: `<prefix>:<key>`, built and taken apart here only.

The prefix names the kind (the registry routes on it: handlers, timers, answers); the
key is the resource's own id (a uuid) or, for a grant's ledger, the grant's id. The ids
of kinds that other actors or the front end address live here, so no module needs
another kind's module to name its entities (the outgoing payment and the grant ledger
address each other); a kind nobody else addresses may make its own `EntityIds`.
"""

from __future__ import annotations


class EntityIds:
    def __init__(self, prefix: str) -> None:
        assert prefix and ":" not in prefix
        self.prefix = prefix
        self._start = f"{prefix}:"

    def __call__(self, key: str) -> str:
        """The entity id of resource `key`."""
        return self._start + key

    def key(self, entity_id: str) -> str:
        """The resource key an entity id of this kind names."""
        if not entity_id.startswith(self._start):
            raise ValueError(f"{entity_id!r} is not a {self.prefix} id")
        return entity_id[len(self._start) :]

    def __repr__(self) -> str:
        return f"EntityIds({self.prefix!r})"


def prefix_of(entity_id: str) -> str:
    """The prefix an entity id starts with: the kind it names, if any."""
    return entity_id.partition(":")[0]


INCOMING_PAYMENT = EntityIds("ip")
QUOTE = EntityIds("quote")
OUTGOING_PAYMENT = EntityIds("op")
GRANT_SPEND = EntityIds("grant")


def incoming_payment_of_url(url: str) -> str:
    """The incoming payment entity a local incoming payment's URL names (its last segment)."""
    return INCOMING_PAYMENT(url.rsplit("/", 1)[1])
