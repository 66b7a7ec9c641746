"""Receivers on other Open Payments servers, read as an Open Payments client (as Rafiki does).

`RemoteReceivers.resolve(url)` turns an incoming payment URL of another server into a
RemoteIncomingPayment (its amounts, expiry, and the ilp method a STREAM sender needs):

1. the URL must be shaped `<origin>[/prefix]/incoming-payments/<id>`, no query, no fragment;
2. an unauthenticated GET of it gives the public view, hence its `authServer`;
3. a non-interactive `incoming-payment` `read-all` grant at that authorization server, asked
   under the ASE's own client identity (opay/remote/identity.py) and signed with its key, is
   kept per authorization server until its token expires (bounded; one request in flight
   per authorization server, however many resolutions wait for it);
4. a signed GET of the URL with the token gives the incoming payment with its `methods`; a
   401 or 403 drops the token and asks for a new grant once more;
5. its wallet address, fetched (and kept briefly), must be served by that same
   authorization server and have the incoming payment under its resourceServer, in the
   same asset: a server cannot pass an incoming payment off as another server's wallet's.

Every request goes through the fetch policy (opay/net/fetch.py): https only unless
OPAY_ALLOW_INSECURE_FETCH, no loopback/private address unless OPAY_FETCH_ALLOW, bounded
size and time, no redirects.

Errors (ReceiverError, an ApiError: a handler may let it out as is):
- 503 `receiver_unavailable`, with Retry-After: the receiver's server (or its authorization
  server) did not answer in time, refused the connection, or answered 5xx/408/429;
- 400 `invalid_receiver`: not an incoming payment URL, no such incoming payment, an answer
  that is not an incoming payment, completed, expired, nothing left to receive, a URL the
  fetch policy refuses, a grant the receiver's authorization server refuses;
- 400 `receiver_without_ilp`: a live incoming payment without a usable `ilp` method.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from typing import Annotated, TypeVar

import httpx
import msgspec

from opay import base64url
from opay.client import RequestSigner
from opay.clock import now_ms
from opay.domain.amounts import Asset, parse_uint64
from opay.domain.errors import DomainError
from opay.domain.times import parse_rfc3339_ms
from opay.http.errors import ApiError
from opay.net.fetch import Fetched, Fetcher, FetchRefused, FetchUnavailable, FetchUnusable
from opay.settings import Settings

T = TypeVar("T")

INVALID = "invalid_receiver"
UNAVAILABLE = "receiver_unavailable"
WITHOUT_ILP = "receiver_without_ilp"

READ_ALL = [{"type": "incoming-payment", "actions": ["read-all"]}]
URL_MAX = 2048
SHARED_SECRET_BYTES = 32
# A token is dropped this long before the expiry its server gave, so it is never sent stale.
TOKEN_MARGIN_SECONDS = 10.0
# A token without expires_in is kept at most this long (a 401 drops it sooner).
TOKEN_DEFAULT_SECONDS = 600.0
# A wallet address document and an incoming payment's authServer are kept this long.
DOCUMENT_CACHE_SECONDS = 30.0
DOCUMENT_CACHE_MAX = 10_000

# RFC 0015 ILP addresses: an allocation scheme, then at least one segment; 1023 bytes at most.
_ILP_ADDRESS = re.compile(r"(g|private|example|peer|self|test[1-3]?|local)([.][a-zA-Z0-9_~-]+)+")
_PAYMENT_PATH = re.compile(r"(?P<base>(/[^/?#]+)*)/incoming-payments/[A-Za-z0-9._~-]{1,256}")


# --- What the remote server answers (decoded, never trusted further than checked) ---------


class _Amount(msgspec.Struct, frozen=True, rename="camel"):
    value: str
    asset_code: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    asset_scale: Annotated[int, msgspec.Meta(ge=0, le=255)]


class _Method(msgspec.Struct, frozen=True, rename="camel"):
    type: str
    ilp_address: str | None = None
    shared_secret: str | None = None


class _IncomingPayment(msgspec.Struct, frozen=True, rename="camel"):
    id: str
    wallet_address: str
    completed: bool
    received_amount: _Amount
    incoming_amount: _Amount | None = None
    expires_at: str | None = None
    methods: list[_Method] = []


class _PublicIncomingPayment(msgspec.Struct, frozen=True, rename="camel"):
    auth_server: Annotated[str, msgspec.Meta(min_length=1, max_length=URL_MAX)]


class _WalletAddress(msgspec.Struct, frozen=True, rename="camel"):
    id: str
    asset_code: str
    asset_scale: int
    auth_server: str
    resource_server: str | None = None  # older servers omit it: then the wallet's origin


class _AccessToken(msgspec.Struct, frozen=True):
    value: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    manage: str | None = None
    expires_in: Annotated[int, msgspec.Meta(ge=0)] | None = None


class _GrantAnswer(msgspec.Struct, frozen=True):
    access_token: _AccessToken | None = None


class _ErrorDetail(msgspec.Struct, frozen=True):
    code: str | None = None
    description: str | None = None


class _ErrorAnswer(msgspec.Struct, frozen=True):
    error: _ErrorDetail | None = None


# --- What resolve() gives ---------------------------------------------------------------


class RemoteIncomingPayment(msgspec.Struct, frozen=True, kw_only=True):
    """A live incoming payment on another server, as its server answered just now."""

    id: str
    wallet_address: str
    asset: Asset
    incoming_amount: int | None
    received_amount: int
    expires_at_ms: int | None
    completed: bool
    ilp_address: str
    shared_secret: bytes
    auth_server: str

    @property
    def remaining(self) -> int | None:
        """What it still accepts (None: no incomingAmount, no limit of its own)."""
        return None if self.incoming_amount is None else self.incoming_amount - self.received_amount


class ReceiverError(ApiError):
    """A receiver that cannot be paid now: `retryable` when its server did not answer."""

    @property
    def retryable(self) -> bool:
        return self.status == 503


def invalid(description: str, code: str = INVALID, **details: object) -> ReceiverError:
    return ReceiverError(400, code, description, dict(details))


class _Grant(msgspec.Struct, frozen=True):
    value: str
    manage: str | None
    good_until: float  # monotonic


class _Bounded(OrderedDict):
    """A small LRU: the oldest entry goes first once `limit` is reached."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: str, value: object) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class RemoteReceivers:
    def __init__(self, settings: Settings, fetcher: Fetcher, signer: RequestSigner) -> None:
        self._fetcher = fetcher
        self._signer = signer
        self._retry_after = str(settings.remote_retry_after_seconds)
        self._grants: _Bounded = _Bounded(settings.remote_grants_max)
        self._asking: dict[str, asyncio.Task[_Grant]] = {}
        self._auth_servers: _Bounded = _Bounded(DOCUMENT_CACHE_MAX)  # url -> (authServer, good until)
        self._wallets: _Bounded = _Bounded(DOCUMENT_CACHE_MAX)  # url -> (_WalletAddress, good until)
        self.grant_requests = 0  # grants asked in this process (for tests and metrics)

    @property
    def client_wallet_address(self) -> str:
        return self._signer.wallet_address

    async def resolve(self, url: str) -> RemoteIncomingPayment:
        base = self._shape(url)
        auth_server = await self._auth_server(url)
        payment = await self._read(url, auth_server)
        if payment.id != url:
            raise invalid("the receiver's server answered for another incoming payment", id=payment.id)
        wallet = await self._wallet(payment.wallet_address)
        return self._checked(url, base, auth_server, payment, wallet)

    def cached_grant(self, auth_server: str) -> tuple[str, str | None] | None:
        """(token, manage URL) kept for `auth_server`, if any."""
        grant = self._grants.get(auth_server)
        return None if grant is None else (grant.value, grant.manage)

    # --- the steps ----------------------------------------------------------------------

    def _shape(self, url: str) -> str:
        """The URL the receiver's resource server must serve it under (its base), or invalid_receiver."""
        not_one = invalid("the receiver must be an incoming payment URL (…/incoming-payments/<id>)", url=url[:URL_MAX])
        if len(url) > URL_MAX:
            raise invalid(f"the receiver URL is longer than {URL_MAX} characters")
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, UnicodeError):
            raise not_one from None
        if parsed.scheme not in ("http", "https") or not parsed.host or parsed.userinfo or parsed.query or parsed.fragment:
            raise not_one
        if "?" in url or "#" in url:
            raise not_one
        path = parsed.raw_path.decode("ascii")
        match = _PAYMENT_PATH.fullmatch(path)
        if match is None:
            raise not_one
        return url[: len(url) - len(path)] + match.group("base")

    async def _auth_server(self, url: str) -> str:
        hit = self._auth_servers.get(url)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        fetched = await self._fetch("GET", url, "the receiver")
        if fetched.status == 404:
            raise invalid("the receiver's server has no such incoming payment", url=url)
        if fetched.status != 200:
            raise invalid(f"the receiver's server answered {fetched.status} for its public view", url=url, status=fetched.status)
        public = self._decode(fetched, _PublicIncomingPayment, "the receiver's public view is not an incoming payment's")
        self._auth_servers.put(url, (public.auth_server, time.monotonic() + DOCUMENT_CACHE_SECONDS))
        return public.auth_server

    async def _read(self, url: str, auth_server: str) -> _IncomingPayment:
        for attempt in (1, 2):
            grant = await self._grant(auth_server)
            body, headers = self._signer.prepare("GET", url, token=grant.value)
            fetched = await self._fetch("GET", url, "the receiver", body=body, headers=headers)
            if fetched.status in (401, 403):
                self._drop(auth_server, grant)
                if attempt == 1:
                    continue  # a revoked or expired token: one new grant, one more read
                raise invalid(
                    f"the receiver's server refuses our read grant ({fetched.status}{_error_code(fetched)})",
                    url=url,
                    status=fetched.status,
                )
            if fetched.status == 404:
                raise invalid("the receiver's server has no such incoming payment", url=url)
            if fetched.status != 200:
                raise invalid(f"the receiver's server answered {fetched.status}{_error_code(fetched)}", url=url, status=fetched.status)
            return self._decode(fetched, _IncomingPayment, "the receiver's server did not answer with an incoming payment")
        raise AssertionError("unreachable")

    async def _grant(self, auth_server: str) -> _Grant:
        grant = self._grants.get(auth_server)
        if grant is not None and grant.good_until > time.monotonic():
            return grant
        asking = self._asking.get(auth_server)
        if asking is None:
            # One request per authorization server, owned by no caller: a caller that gives
            # up (cancelled) leaves it to the others waiting for it.
            asking = asyncio.create_task(self._request_grant(auth_server))
            self._asking[auth_server] = asking
            asking.add_done_callback(lambda task: self._asked(auth_server, task))
        return await asyncio.shield(asking)

    def _asked(self, auth_server: str, task: asyncio.Task[_Grant]) -> None:
        if self._asking.get(auth_server) is task:
            del self._asking[auth_server]
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have given up

    async def _request_grant(self, auth_server: str) -> _Grant:
        self.grant_requests += 1
        body, headers = self._signer.prepare("POST", auth_server, json=self._signer.grant_body(READ_ALL))
        fetched = await self._fetch("POST", auth_server, "the receiver's authorization server", body=body, headers=headers)
        if fetched.status != 200:
            raise invalid(
                f"the receiver's authorization server refused a read-all grant ({fetched.status}{_error_code(fetched)})",
                authServer=auth_server,
                status=fetched.status,
            )
        answer = self._decode(fetched, _GrantAnswer, "the receiver's authorization server did not answer with a grant")
        if answer.access_token is None:
            raise invalid("the receiver's authorization server wants interaction for a read-all grant", authServer=auth_server)
        token = answer.access_token
        lifetime = TOKEN_DEFAULT_SECONDS if token.expires_in is None else min(token.expires_in - TOKEN_MARGIN_SECONDS, TOKEN_DEFAULT_SECONDS * 6)
        grant = _Grant(token.value, token.manage, time.monotonic() + max(lifetime, 0.0))
        if lifetime > 0:
            self._grants.put(auth_server, grant)
        return grant

    def _drop(self, auth_server: str, grant: _Grant) -> None:
        if self._grants.get(auth_server) == grant:  # not one another resolution just replaced
            del self._grants[auth_server]

    async def _wallet(self, url: str) -> _WalletAddress:
        hit = self._wallets.get(url)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        fetched = await self._fetch("GET", url, "the receiver's wallet address")
        if fetched.status != 200:
            raise invalid(f"the receiver's wallet address answered {fetched.status}", walletAddress=url, status=fetched.status)
        wallet = self._decode(fetched, _WalletAddress, "the receiver's wallet address is not a wallet address")
        self._wallets.put(url, (wallet, time.monotonic() + DOCUMENT_CACHE_SECONDS))
        return wallet

    def _checked(
        self, url: str, base: str, auth_server: str, payment: _IncomingPayment, wallet: _WalletAddress
    ) -> RemoteIncomingPayment:
        resource_server = (wallet.resource_server or _origin(wallet.id)).rstrip("/")
        if wallet.id != payment.wallet_address or wallet.auth_server != auth_server or resource_server != base:
            raise invalid(
                "the receiver's wallet address does not vouch for it (another authorization or resource server)",
                walletAddress=payment.wallet_address,
            )
        try:
            received = parse_uint64(payment.received_amount.value, "receivedAmount.value")
            incoming = None if payment.incoming_amount is None else parse_uint64(payment.incoming_amount.value, "incomingAmount.value")
            expires_at_ms = None if payment.expires_at is None else parse_rfc3339_ms(payment.expires_at, "expiresAt")
        except DomainError as error:
            raise invalid(f"the receiver's server answered a malformed incoming payment: {error.description}") from None
        asset = Asset(payment.received_amount.asset_code, payment.received_amount.asset_scale)
        if payment.incoming_amount is not None and Asset(payment.incoming_amount.asset_code, payment.incoming_amount.asset_scale) != asset:
            raise invalid("the receiver's incomingAmount and receivedAmount are in different assets")
        if Asset(wallet.asset_code, wallet.asset_scale) != asset:
            raise invalid("the receiver is not in its wallet address's asset")
        if payment.completed:
            raise invalid("the receiver is completed: it accepts no more payments", url=url)
        if expires_at_ms is not None and expires_at_ms <= now_ms():
            raise invalid("the receiver has expired: it accepts no more payments", url=url)
        if incoming is not None and incoming <= received:
            raise invalid("the receiver has received its incomingAmount: it accepts no more payments", url=url)
        method = next((m for m in payment.methods if m.type == "ilp"), None)
        if method is None:
            raise invalid("the receiver offers no ilp payment method", WITHOUT_ILP, url=url)
        secret = _shared_secret(method.shared_secret)
        if method.ilp_address is None or len(method.ilp_address) > 1023 or _ILP_ADDRESS.fullmatch(method.ilp_address) is None or secret is None:
            raise invalid("the receiver's ilp method has no valid ilpAddress and 32-byte sharedSecret", WITHOUT_ILP, url=url)
        return RemoteIncomingPayment(
            id=payment.id,
            wallet_address=payment.wallet_address,
            asset=asset,
            incoming_amount=incoming,
            received_amount=received,
            expires_at_ms=expires_at_ms,
            completed=payment.completed,
            ilp_address=method.ilp_address,
            shared_secret=secret,
            auth_server=auth_server,
        )

    # --- plumbing -----------------------------------------------------------------------

    async def _fetch(
        self, method: str, url: str, what: str, *, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Fetched:
        try:
            return await self._fetcher.request(method, url, body=body, headers=headers)
        except FetchRefused as error:
            raise invalid(f"{what} is not fetched under this server's rules: {error.reason}", url=url) from None
        except FetchUnavailable as error:
            raise ReceiverError(
                503, UNAVAILABLE, f"{what} is unavailable: {error.reason}; retry later", {"url": url}, {"Retry-After": self._retry_after}
            ) from None
        except FetchUnusable as error:
            raise invalid(f"{what} answered unusably: {error.reason}", url=url) from None

    @staticmethod
    def _decode(fetched: Fetched, type: type[T], description: str) -> T:
        try:
            return msgspec.json.decode(fetched.body, type=type)
        except msgspec.MsgspecError as error:
            raise invalid(f"{description}: {error}") from None


def _error_code(fetched: Fetched) -> str:
    try:
        detail = msgspec.json.decode(fetched.body, type=_ErrorAnswer).error
    except msgspec.MsgspecError:
        return ""
    return "" if detail is None or not detail.code else f" {detail.code[:64]}"


def _origin(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return ""
    return f"{parsed.scheme}://{parsed.netloc.decode('ascii')}"


def _shared_secret(raw: str | None) -> bytes | None:
    if raw is None:
        return None
    try:
        secret = base64url.decode(raw)
    except ValueError:
        return None
    return secret if len(secret) == SHARED_SECRET_BYTES else None
