"""The front end's side of a remote payment: it puts an entity's Prepares on a peer's link.

A shard never does network I/O inside a batch. A remote payment's entity computes its next
Prepares (opay.ilp.sender), persists its state with them in flight, and tells a
`SendPackets`; the router (opay/actors/router.py) runs it here instead of at an entity:
every Prepare POSTed concurrently over ILP-over-HTTP (opay.ilp.link.HttpLink, each request
bounded by the Prepare's expiry), and the replies go back to the entity as one Answered
(`LinkReplies`), which accounts them. Nothing here counts anything: a lost answer (this
front end crashed) is the entity's due time, which resends the same bytes or, once they
expired, abandons them and asks for a `refresh`: the receiver read over Open Payments
(incomingAmount - receivedAmount), so it is never offered more than it still takes.
"""

from __future__ import annotations

import asyncio
import logging
from fractions import Fraction
from typing import Awaitable, Callable

import msgspec

from opay.actors.messages import LinkReplies, SendPackets
from opay.domain.outgoing_payment import RemoteDelivery
from opay.ilp import sender as stream
from opay.ilp.link import LOCAL, HttpLink, local_reject
from opay.ilp.oer import Writer
from opay.ilp.packet import Prepare, Reject, decode_packet
from opay.ilp.peers import Peer, PeerStore
from opay.observability import metrics

log = logging.getLogger("opay.links")

LINKS_MAX = 100  # HTTP pools kept (one per peer url and token)


def remote_delivery(
    *,
    ilp_address: str,
    shared_secret: bytes,
    remaining: int | None,
    peer: str,
    receive: int | None,
    max_source: int,
    min_rate: Fraction,
    rate_bounds: tuple[Fraction, Fraction] | None,
    debit_units: bool,
    packets_in_flight: int,
    packet_expiry_ms: int,
) -> RemoteDelivery:
    """A remote payment's delivery as it opens: a fixed delivery of `receive` (a quote's
    receiveAmount) spending at most `max_source` link units, or, without `receive`, a fixed
    send of `max_source` (incomingPayment + debitAmount); never past the receiver's room
    (`remaining`: incomingAmount - receivedAmount as its server answered just now)."""
    config = stream.SenderConfig(packets_in_flight=packets_in_flight, packet_expiry_ms=packet_expiry_ms)
    if receive is not None:
        state = stream.fixed_delivery(ilp_address, shared_secret, receive, min_rate, max_source=max_source, rate_bounds=rate_bounds, config=config)
    else:
        state = stream.fixed_send(ilp_address, shared_secret, max_source, min_rate, rate_bounds=rate_bounds, config=config)
    if remaining is not None:
        state = stream.set_cap(state, remaining)
    return RemoteDelivery(peer=peer, stream=msgspec.msgpack.encode(state), debit_units=debit_units)


class PacketLinks:
    def __init__(self, peers: PeerStore, resolve: Callable[[str], Awaitable[object]] | None, *, pool_size: int = 20) -> None:
        self._peers = peers
        self._resolve = resolve
        self._pool_size = pool_size
        self._links: dict[tuple[str, str], HttpLink] = {}

    def _link(self, peer: Peer) -> HttpLink:
        key = (peer.url, peer.outgoing_token)
        link = self._links.get(key)
        if link is None:
            if len(self._links) >= LINKS_MAX:
                _, old = self._links.popitem()
                old.close()
            link = self._links[key] = HttpLink(peer.url, peer.outgoing_token, pool_size=self._pool_size)
        return link

    async def _remaining(self, receiver: str) -> tuple[bool, int | None, str]:
        """(read, remaining, error) of a remote incoming payment."""
        from opay.remote.receivers import ReceiverError

        if self._resolve is None:
            return False, None, "no resolver for remote receivers"
        try:
            found = await self._resolve(receiver)
        except ReceiverError as error:
            if error.retryable:
                return False, None, f"{error.code}: {error.description}"
            # Completed, expired, no longer an incoming payment: it takes nothing more.
            return True, 0, f"{error.code}: {error.description}"
        except Exception as error:  # the read failed: unknown, asked again on the next resume
            return False, None, f"{type(error).__name__}: {error}"
        return True, found.remaining, ""  # type: ignore[attr-defined]

    async def run(self, command: SendPackets) -> LinkReplies:
        refreshed, remaining, error = False, None, ""
        if command.refresh:
            refreshed, remaining, error = await self._remaining(command.receiver)
        prepares: list[Prepare] = []
        for raw in command.prepares:
            packet = decode_packet(raw)
            assert isinstance(packet, Prepare)
            prepares.append(packet)
        conditions = [p.execution_condition for p in prepares]
        if not prepares:
            return LinkReplies(command.peer, [], [], remaining, refreshed, error)
        try:
            peer = await (self._peers.get(command.peer) if command.peer else self._peers.route(prepares[0].destination))
        except Exception as error:  # Redis: nothing sent, the due time resends
            log.warning("links: no peer table for %s: %s", command.entity_id, error)
            return LinkReplies(command.peer, [], [], remaining, refreshed, f"peers unreadable: {error}")
        if peer is None:
            rejects = [local_reject("F02", f"no route to {p.destination}").encode() for p in prepares]
            for _ in prepares:
                metrics.observe_ilp_packet("sent", "F02")
            return LinkReplies(command.peer, conditions, rejects, remaining, refreshed, error)
        link = self._link(peer)

        async def one(prepare: Prepare):
            if peer.max_packet_amount is not None and prepare.amount > peer.max_packet_amount:
                # The link's own limit, told as a connector would (F08 with amount and maximum).
                w = Writer()
                w.write_uint64(prepare.amount)
                w.write_uint64(peer.max_packet_amount)
                return Reject("F08", LOCAL, b"packet larger than the peer link's maxPacketAmount", w.getvalue())
            return await link.send_async(prepare)

        replies = await asyncio.gather(*(one(p) for p in prepares), return_exceptions=True)
        answered = [local_reject("T00", f"link raised {type(r).__name__}: {r}") if isinstance(r, BaseException) else r for r in replies]
        for reply in answered:
            # What the peer (or the link, for its own Rejects) answered; a Fulfill is
            # counted here before the entity checks its fulfillment.
            metrics.observe_ilp_packet("sent", reply.code if isinstance(reply, Reject) else "")
        encoded = [reply.encode() for reply in answered]
        return LinkReplies(peer.name, conditions, encoded, remaining, refreshed, error)

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()
