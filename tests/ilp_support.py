"""A minimal STREAM sender built from opay.ilp codecs, as any ILP sender would build packets.

It talks synchronous ILP-over-HTTP to `POST {public_url}/ilp` and decodes what comes back.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import httpx

from opay.ilp.packet import Fulfill, Prepare, Reject, decode_packet
from opay.ilp.stream import (
    StreamMaxMoney,
    StreamMoney,
    StreamPacket,
    condition_for,
    decrypt_stream_packet,
    encrypt_stream_packet,
    fulfillment_for,
)

PEER_TOKEN = "peer-token-for-tests"
OTHER_PEER_TOKEN = "second-peer-token"
# Known to the tests so they can mint credentials the way the server does (unknown payments).
STREAM_SECRET = base64.urlsafe_b64encode(bytes(range(32))).rstrip(b"=").decode()


def ilp_env(**extra: str) -> dict[str, str]:
    return {"OPAY_ILP_INCOMING_TOKENS": f"{PEER_TOKEN}, {OTHER_PEER_TOKEN}", **extra}


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def ilp_method(payment: dict) -> dict:
    methods = [m for m in payment["methods"] if m["type"] == "ilp"]
    assert len(methods) == 1, payment
    return methods[0]


@dataclass
class Sent:
    raw: bytes
    prepare: Prepare
    sequence: int
    fulfillment: bytes | None  # None: the packet was built unfulfillable


@dataclass
class Answer:
    packet: Fulfill | Reject
    stream: StreamPacket | None  # the decrypted STREAM reply, when there is one

    @property
    def code(self) -> str:
        return "fulfill" if isinstance(self.packet, Fulfill) else self.packet.code

    def frames(self, kind: type) -> list:
        return [] if self.stream is None else [f for f in self.stream.frames if isinstance(f, kind)]

    def max_money(self) -> StreamMaxMoney:
        found = self.frames(StreamMaxMoney)
        assert len(found) == 1, self.stream
        return found[0]


@dataclass
class Connection:
    """One STREAM connection: a destination, a shared secret and a sequence counter."""

    http: httpx.AsyncClient
    url: str
    destination: str
    shared_secret: bytes
    bearer: str = PEER_TOKEN
    next_sequence: int = 1
    sent: list[Sent] = field(default_factory=list)

    @classmethod
    def to(cls, http: httpx.AsyncClient, public_url: str, payment: dict, **kw) -> "Connection":
        method = ilp_method(payment)
        return cls(http, f"{public_url}/ilp", method["ilpAddress"], b64url_decode(method["sharedSecret"]), **kw)

    def build(
        self,
        amount: int,
        *,
        frames: tuple | None = None,
        min_amount: int = 0,
        fulfillable: bool = True,
        expires_in: float = 30.0,
        sequence: int | None = None,
        secret: bytes | None = None,
        destination: str | None = None,
    ) -> Sent:
        if sequence is None:
            sequence, self.next_sequence = self.next_sequence, self.next_sequence + 1
        frames = (StreamMoney(1, 1),) if frames is None else frames
        data = encrypt_stream_packet(secret or self.shared_secret, StreamPacket(sequence, 12, min_amount, frames))
        fulfillment = fulfillment_for(self.shared_secret, data) if fulfillable else None
        condition = condition_for(fulfillment) if fulfillment else os.urandom(32)
        prepare = Prepare(
            amount=amount,
            expires_at=datetime.now(timezone.utc) + timedelta(seconds=expires_in),
            execution_condition=condition,
            destination=destination or self.destination,
            data=data,
        )
        return Sent(prepare.encode(), prepare, sequence, fulfillment)

    async def post(self, raw: bytes, bearer: str | None = None) -> httpx.Response:
        return await self.http.post(
            self.url, content=raw, headers={"authorization": f"Bearer {bearer or self.bearer}", "content-type": "application/octet-stream"}
        )

    async def deliver(self, sent: Sent) -> Answer:
        response = await self.post(sent.raw)
        assert response.status_code == 200, response.text
        packet = decode_packet(response.content)
        assert isinstance(packet, (Fulfill, Reject)), packet
        if isinstance(packet, Fulfill):
            assert sent.fulfillment is not None and packet.fulfillment == sent.fulfillment
            assert hashlib.sha256(packet.fulfillment).digest() == sent.prepare.execution_condition
        stream = None
        if packet.data and (isinstance(packet, Fulfill) or packet.code == "F99"):
            stream = decrypt_stream_packet(self.shared_secret, packet.data)
            assert stream.sequence == sent.sequence
            assert stream.ilp_packet_type == (13 if isinstance(packet, Fulfill) else 14)
            assert stream.prepare_amount == sent.prepare.amount  # what arrived
        if isinstance(packet, Fulfill):
            assert stream is not None, "a Fulfill must carry the STREAM reply"
        return Answer(packet, stream)

    async def send(self, amount: int, **kw) -> Answer:
        sent = self.build(amount, **kw)
        self.sent.append(sent)
        return await self.deliver(sent)


async def received(world, payment: dict, token: str) -> tuple[int, bool]:
    """receivedAmount and completed, through the Open Payments API."""
    response = await world.client.request("GET", payment["id"], token=token)
    assert response.status_code == 200, response.text
    body = response.json()
    return int(body["receivedAmount"]["value"]), body["completed"]
