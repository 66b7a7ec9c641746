"""A minimal STREAM sender built from opay.ilp codecs, as any ILP sender would build packets,
and a recording proxy to put between any sender and the server.

The sender talks synchronous ILP-over-HTTP to `POST {public_url}/ilp` and decodes what
comes back.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay import base64url
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

from tests.support import free_port

PEER_TOKEN = "peer-token-for-tests"
OTHER_PEER_TOKEN = "second-peer-token"
# Known to the tests so they can mint credentials the way the server does (unknown payments).
STREAM_SECRET = base64url.encode(bytes(range(32)))


def ilp_env(**extra: str) -> dict[str, str]:
    return {"OPAY_ILP_INCOMING_TOKENS": f"{PEER_TOKEN}, {OTHER_PEER_TOKEN}", **extra}


b64url_decode = base64url.decode


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


# ---------------------------------------------------------------- recording proxy


@dataclass
class Exchange:
    request: bytes
    response: bytes
    lost: bool = False  # the server answered, but the proxy did not pass the answer on

    @property
    def prepare(self) -> Prepare | None:
        try:
            packet = decode_packet(self.request)
        except ValueError:
            return None
        return packet if isinstance(packet, Prepare) else None

    @property
    def reply(self) -> Fulfill | Reject | None:
        try:
            packet = decode_packet(self.response)
        except ValueError:
            return None
        return packet if isinstance(packet, (Fulfill, Reject)) else None


def is_fulfill(exchange: Exchange) -> bool:
    return isinstance(exchange.reply, Fulfill)


class RecordingProxy:
    """Forwards POST /ilp to the server verbatim and keeps every request and response body.

    `lose(n)` makes it drop the server's next n answers that match (Fulfills by default)
    on the way back: the server has answered, the sender gets a 502 instead, as when a
    connection breaks after the server replied."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/ilp"
        self._lock = threading.Lock()
        self._exchanges: list[Exchange] = []
        self._to_lose = 0
        self._lose_when: Callable[[Exchange], bool] = is_fulfill
        self._http: httpx.AsyncClient | None = None
        app = Starlette(routes=[Route("/ilp", self._forward, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def lose(self, n: int, when: Callable[[Exchange], bool] = is_fulfill) -> None:
        with self._lock:
            self._to_lose, self._lose_when = n, when

    async def _forward(self, request: Request) -> Response:
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k in ("authorization", "content-type")}
        if self._http is None:  # made in the proxy's own event loop, and kept
            self._http = httpx.AsyncClient(timeout=60)
        answer = await self._http.post(self.target, content=body, headers=headers)
        if answer.status_code == 200:
            exchange = Exchange(body, answer.content)
            with self._lock:
                if self._to_lose > 0 and self._lose_when(exchange):
                    self._to_lose -= 1
                    exchange.lost = True
                self._exchanges.append(exchange)
            if exchange.lost:
                return Response(b"the answer was lost on the way back", status_code=502)
        return Response(answer.content, status_code=answer.status_code, media_type=answer.headers.get("content-type"))

    def exchanges_to(self, ilp_address: str) -> list[Exchange]:
        with self._lock:
            return [e for e in self._exchanges if e.prepare is not None and e.prepare.destination == ilp_address]

    def start(self) -> "RecordingProxy":
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "recording proxy did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
