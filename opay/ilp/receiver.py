"""The STREAM receiver: one ILP Prepare in, one Fulfill or Reject out.

Stateless apart from a cache of facts that never change (a payment's asset and cap):
the ILP address carries the incoming payment (sealed, see credentials.py), and the money
goes through the payment's entity actor exactly like an operator credit. The entity names
each packet by its executionCondition (packet_dedupe), which STREAM derives from the
shared secret and the encrypted data: an exact resend of a credited Prepare credits
nothing and is fulfilled again with the same fulfillment (recomputed here from the data);
a new packet that reuses a STREAM sequence has another condition and is credited.

Order of checks, each answering without crediting anything:
  undecodable / not a Prepare      F01
  peer.config                      IL-DCP answer (a Fulfill)
  expiresAt not in the future      R00
  amount > max packet amount       F08 (data: amount received, maximum; UInt64 each)
  address not ours, token forged   F02
  STREAM data fails to decrypt     F06
  unknown incoming payment         F02
  payment's asset is not the link's asset  F02 (amounts would be in another unit)
  unfulfillable (probe), amount < prepareAmount, ConnectionClose, completed or expired
                                   F99 with an encrypted STREAM reply
Then a money packet is credited through `credit(payment uuid, amount, condition,
expires_at_ms, timeout)`, and the answer says what happened:
  credited now, or credited before (an exact resend)    Fulfill
  refused (cap, completed, expired payment, overflow, condition reused with another amount)
                                                        F99 with an encrypted STREAM reply
  the Prepare expired before the entity applied it      R00 (never fulfilled after expiresAt)
  the payment remembers too many unexpired packets       T05
  outcome unknown (shard timeout, storage down)         asked again once, within the
                                                        Prepare's time; still unknown: T00

Every STREAM reply carries ConnectionAssetDetails (the payment's asset) and, for each
stream the sender named, StreamMaxMoney(receiveMax = incomingAmount or 2^64-1,
totalReceived = what the payment holds now). receiveMax is a constant of the payment,
so an advertised limit is never lowered; totalReceived is payment-wide, so concurrent
connections into one capped payment all see the room that is really left.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Awaitable, Callable

from opay.actors import incoming_payments
from opay.actors.messages import Credited, Failed, Reply
from opay.domain import incoming_payment as rules
from opay.domain.amounts import Asset
from opay.domain.incoming_payment import IncomingPayment
from opay.domain.times import to_ms
from opay.ilp.credentials import CredentialMint
from opay.ilp.oer import U64_MAX, OerError, Writer, encode_uint64
from opay.ilp.packet import Fulfill, IlpPacketType, Prepare, Reject, decode_packet
from opay.ilp.stream import (
    ConnectionAssetDetails,
    ConnectionClose,
    Frame,
    StreamDecryptError,
    StreamErrorCode,
    StreamMaxMoney,
    StreamMoney,
    StreamMoneyBlocked,
    StreamPacket,
    condition_for,
    decrypt_stream_packet,
    encrypt_stream_packet,
    fulfillment_for,
)

log = logging.getLogger("opay.ilp")

# The entity's refusals that mean something on the wire.
PREPARE_EXPIRED = incoming_payments.PREPARE_EXPIRED.code
TOO_MANY_PACKETS = incoming_payments.PACKETS_IN_FLIGHT.code
UNKNOWN = Failed("unavailable", "unknown", "the credit's outcome is unknown")

PEER_CONFIG = "peer.config"
_ILDCP_FULFILLMENT = bytes(32)
_ILDCP_CONDITION = hashlib.sha256(_ILDCP_FULFILLMENT).digest()

# (payment uuid, amount, executionCondition, expires_at_ms, timeout seconds, peer name) -> reply
CreditFn = Callable[[str, int, bytes, int, float, str], Awaitable[Reply]]
LookupFn = Callable[[str], Awaitable[IncomingPayment | None]]


@dataclass(frozen=True)
class ReceiverConfig:
    ilp_address: str  # ours: credentials live under it, and it signs our Rejects
    asset: Asset  # the asset of the peering link, told to peers by IL-DCP
    max_packet_amount: int = 0  # 0: no limit

    @classmethod
    def from_settings(cls, settings) -> "ReceiverConfig":
        return cls(
            ilp_address=settings.ilp_address,
            asset=Asset(settings.ilp_asset_code, settings.ilp_asset_scale),
            max_packet_amount=settings.ilp_max_packet_amount,
        )


@dataclass(frozen=True)
class Link:
    """The peer link a packet arrived on: a configured peer (opay/ilp/peers.py) has a name
    its arrivals are counted to, its own asset and maybe a packet limit of its own."""

    label: str  # our address for the peer (IL-DCP) is `{ilp_address}.{label}`
    peer_name: str = ""  # "": an OPAY_ILP_INCOMING_TOKENS token, counted to no peer
    asset: Asset | None = None  # None: the configured peering asset
    max_packet_amount: int | None = None  # None: only OPAY_ILP_MAX_PACKET_AMOUNT


@dataclass(frozen=True)
class _Facts:
    """What never changes about an incoming payment, so it can be cached forever."""

    asset: Asset
    incoming_amount: int | None


def peer_label(bearer_token: str) -> str:
    """A stable, non-secret address segment for the peer that holds this bearer token."""
    return "peer-" + hashlib.sha256(bearer_token.encode()).hexdigest()[:12]


class StreamReceiver:
    def __init__(
        self,
        config: ReceiverConfig,
        mint: CredentialMint,
        *,
        credit: CreditFn,
        lookup: LookupFn,
        facts_max: int = 100_000,
    ) -> None:
        self.config = config
        self._mint = mint
        self._credit = credit
        self._lookup = lookup
        self._facts: dict[str, _Facts] = {}
        self._facts_max = facts_max

    # ------------------------------------------------------------------ entry point

    async def handle(self, raw: bytes, now: datetime, peer: str | Link = "peer") -> bytes:
        """The reply (a Fulfill or a Reject, encoded) to one encoded Prepare arriving on
        `peer` (a Link, or the label of a link in the configured asset)."""
        link = peer if isinstance(peer, Link) else Link(peer)
        asset = link.asset or self.config.asset
        try:
            prepare = decode_packet(raw)
        except (OerError, ValueError) as error:
            return self._reject("F01", f"invalid ILP packet: {error}")
        if not isinstance(prepare, Prepare):
            return self._reject("F01", "expected an ILP Prepare")
        if prepare.destination == PEER_CONFIG:
            return self._ildcp(prepare, link.label, asset)
        if prepare.expires_at <= now:
            return self._reject("R00", "the Prepare has expired")
        limit = min((n for n in (self.config.max_packet_amount, link.max_packet_amount) if n), default=0)
        if limit and prepare.amount > limit:
            return Reject(
                "F08", self.config.ilp_address, b"packet amount too large", encode_uint64(prepare.amount) + encode_uint64(limit)
            ).encode()
        opened = self._mint.open(prepare.destination)
        if opened is None:
            return self._reject("F02", "no such receiver")
        payment_uuid, token = opened
        secret = self._mint.shared_secret_for(token)
        try:
            request = decrypt_stream_packet(secret, prepare.data)
        except (StreamDecryptError, OerError, ValueError):
            return self._reject("F06", "STREAM data could not be decrypted")
        if request.ilp_packet_type != IlpPacketType.PREPARE:
            return self._reject("F06", "STREAM packet type does not match the ILP Prepare")
        try:
            return await self._money(prepare, request, payment_uuid, secret, now, asset, link.peer_name)
        except Exception as error:  # Redis, Ray, a shard: never a Fulfill when unsure
            log.warning("ILP packet for %s answered T00: %r", payment_uuid, error)
            return self._reject("T00", "temporarily unable to credit; retry")

    # ------------------------------------------------------------------ STREAM

    async def _money(
        self, prepare: Prepare, request: StreamPacket, payment_uuid: str, secret: bytes, now: datetime, asset: Asset, peer_name: str
    ) -> bytes:
        facts = self._facts.get(payment_uuid)
        current: IncomingPayment | None = None
        fulfillment = fulfillment_for(secret, prepare.data)
        fulfillable = condition_for(fulfillment) == prepare.execution_condition and prepare.amount >= request.prepare_amount
        closing = any(isinstance(f, ConnectionClose) for f in request.frames)
        if facts is None or not fulfillable or closing or prepare.amount == 0:
            # Anything that will not credit answers from the payment as it is now.
            current = await self._lookup(payment_uuid)
            if current is None:
                return self._reject("F02", "no such incoming payment")
            facts = self._remember(payment_uuid, current)
        if facts.asset != asset:
            return self._reject("F02", f"this payment receives {facts.asset.code}/{facts.asset.scale}, not over this link")

        streams = _stream_ids(request.frames)
        if current is not None:
            terminal = _terminal_close(current, now)
            frames = self._frames(facts, streams, current.received, terminal)
            if closing and terminal is None:
                frames.append(ConnectionClose(StreamErrorCode.NO_ERROR, ""))
            if terminal is not None or closing or not fulfillable:
                return self._stream_reject(prepare, request, secret, frames)
            if prepare.amount == 0:
                return self._stream_fulfill(prepare, request, secret, fulfillment, frames)

        reply = await self._credit_once_known(payment_uuid, prepare, peer_name)
        if isinstance(reply, Failed):
            if reply.kind == "not_found":
                return self._reject("F02", "no such incoming payment")
            if reply.code == PREPARE_EXPIRED:
                return self._reject("R00", "the Prepare expired before it could be credited")
            if reply.code == TOO_MANY_PACKETS:
                return self._reject("T05", "too many packets in flight for this payment; retry shortly")
            if reply.kind == "unavailable":
                return self._reject("T00", "temporarily unable to credit; retry")
            # A condition reused with another amount, or an amount the rules refuse.
            log.info("ILP credit for %s refused: %s", payment_uuid, reply.code)
            return self._stream_reject(prepare, request, secret, self._frames(facts, streams, None, None))
        assert isinstance(reply, Credited)
        outcome = reply.outcome
        if not outcome.accepted:
            close = None
            if outcome.refused_code in (rules.REFUSED_COMPLETED, rules.REFUSED_EXPIRED):
                close = _close_for(outcome.refused_code)
            frames = self._frames(facts, streams, reply.received_now, close)
            return self._stream_reject(prepare, request, secret, frames)
        # Credited now, or by an earlier copy of this very Prepare: the same fulfillment.
        return self._stream_fulfill(prepare, request, secret, fulfillment, self._frames(facts, streams, reply.received_now, None))

    async def _credit_once_known(self, payment_uuid: str, prepare: Prepare, peer_name: str) -> Reply:
        """The credit's answer within the Prepare's remaining time. The credit is
        idempotent by condition, so `credit` asks again once when the outcome is unknown
        (ShardRouter.ask_until_known: a credit that did land is found and fulfilled).
        Still unknown: the caller answers T00."""
        expires_at_ms = to_ms(prepare.expires_at)
        left = (expires_at_ms - to_ms(datetime.now(timezone.utc))) / 1000
        if left <= 0:
            return UNKNOWN
        return await self._credit(payment_uuid, prepare.amount, prepare.execution_condition, expires_at_ms, left, peer_name)

    def _remember(self, payment_uuid: str, payment: IncomingPayment) -> _Facts:
        facts = _Facts(payment.asset, payment.incoming_amount)
        if len(self._facts) >= self._facts_max:
            self._facts.clear()
        self._facts[payment_uuid] = facts
        return facts

    def _frames(self, facts: _Facts, streams: list[int], received: int | None, close: ConnectionClose | None) -> list[Frame]:
        frames: list[Frame] = [ConnectionAssetDetails(facts.asset.code, facts.asset.scale)]
        if received is not None:
            receive_max = U64_MAX if facts.incoming_amount is None else facts.incoming_amount
            frames.extend(StreamMaxMoney(stream_id, receive_max, min(received, U64_MAX)) for stream_id in streams)
        if close is not None:
            frames.append(close)
        return frames

    def _stream_fulfill(self, prepare: Prepare, request: StreamPacket, secret: bytes, fulfillment: bytes, frames: list[Frame]) -> bytes:
        reply = StreamPacket(request.sequence, IlpPacketType.FULFILL, prepare.amount, tuple(frames))
        return Fulfill(fulfillment, encrypt_stream_packet(secret, reply)).encode()

    def _stream_reject(self, prepare: Prepare, request: StreamPacket, secret: bytes, frames: list[Frame]) -> bytes:
        # prepareAmount in a reply is what arrived: senders measure the exchange rate with it.
        reply = StreamPacket(request.sequence, IlpPacketType.REJECT, prepare.amount, tuple(frames))
        return Reject("F99", self.config.ilp_address, b"", encrypt_stream_packet(secret, reply)).encode()

    # ------------------------------------------------------------------ IL-DCP and plain rejects

    def _ildcp(self, prepare: Prepare, label: str, asset: Asset) -> bytes:
        if prepare.execution_condition != _ILDCP_CONDITION:
            return self._reject("F05", "wrong condition for peer.config")
        w = Writer()
        w.write_var_octets(f"{self.config.ilp_address}.{label}".encode("ascii"))
        w.write_uint8(asset.scale)
        w.write_var_octets(asset.code.encode("utf-8"))
        return Fulfill(_ILDCP_FULFILLMENT, w.getvalue()).encode()

    def _reject(self, code: str, message: str) -> bytes:
        return Reject(code, self.config.ilp_address, message.encode("utf-8")).encode()


def _stream_ids(frames: tuple[Frame, ...]) -> list[int]:
    """The streams the sender named: those it pays on, is blocked on, or tells us about."""
    ids = {f.stream_id for f in frames if isinstance(f, (StreamMoney, StreamMoneyBlocked, StreamMaxMoney))}
    return sorted(ids)


def _terminal_close(payment: IncomingPayment, now: datetime) -> ConnectionClose | None:
    if payment.completed:
        return _close_for(rules.REFUSED_COMPLETED)
    if rules.is_expired(payment, to_ms(now)):
        return _close_for(rules.REFUSED_EXPIRED)
    return None


def _close_for(refused_code: str) -> ConnectionClose:
    if refused_code == rules.REFUSED_COMPLETED:
        return ConnectionClose(StreamErrorCode.NO_ERROR, "the incoming payment is completed")
    return ConnectionClose(StreamErrorCode.APPLICATION_ERROR, "the incoming payment has expired")

