"""One settings object, read from OPAY_* environment variables.

Every field has an embedded default so `opay serve` needs no configuration; each
limit the server enforces is named here so an operator can see and change it.
"""

from __future__ import annotations

from fractions import Fraction

import os
import re
import secrets
from urllib.parse import urlsplit

import msgspec


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    public_url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8000
    operator_host: str = "127.0.0.1"
    operator_port: int = 8001
    operator_token: str = ""
    data_dir: str = "./var"
    # Empty: opay starts its own redis-server under data_dir on redis_port.
    redis_url: str = ""
    redis_port: int = 6399
    # Empty: opay starts a local Ray.
    ray_address: str = ""
    shards: int = 0  # 0: the count pinned in Redis, else one per CPU (then pinned)
    ilp_address: str = "test.opay"
    # base64url of 32 bytes; empty: generated on first start and kept in Redis.
    stream_secret: str = ""
    # ILP-over-HTTP (POST {public_url}/ilp): comma-separated Bearer tokens of the peers
    # allowed to send packets; empty: every packet is refused with 401.
    ilp_incoming_tokens: str = ""
    # The asset of the peering link, told to peers by IL-DCP; only incoming payments in
    # this asset can receive over ILP (amounts are credited one to one).
    ilp_asset_code: str = "USD"
    ilp_asset_scale: int = 2
    ilp_max_packet_amount: int = 0  # above it a Prepare is rejected F08; 0: no limit
    incoming_payment_default_expiry_seconds: int = 24 * 3600
    incoming_payment_max_expiry_seconds: int = 30 * 24 * 3600
    access_token_seconds: int = 3600
    signature_max_age_seconds: int = 300
    signature_max_skew_seconds: int = 30
    # Empty: the resource server asks the authorization server in this process.
    introspection_url: str = ""
    introspection_cache_seconds: float = 5.0
    introspection_timeout_seconds: float = 2.0
    jwks_cache_seconds: float = 30.0
    # Fetches of URLs a client supplies (its wallet address's keys; opay/net/fetch.py):
    allow_insecure_fetch: bool = False  # true: http as well as https (tests, local demos only)
    fetch_allow: str = ""  # comma-separated hosts, IPs, CIDRs that may be loopback/private/link-local
    fetch_max_bytes: int = 64 * 1024  # a longer answer is refused, never read to its end
    fetch_timeout_seconds: float = 2.0  # one deadline per fetch: resolution, connect and whole body
    # The ASE's own Open Payments client identity (opay/remote/identity.py): the path of a
    # wallet address of this server, created at start if missing, whose jwks.json publishes
    # the key this server signs with when it reads receivers on other servers.
    client_wallet_address: str = "ase"
    # Remote receivers (opay/remote/receivers.py): access tokens kept per authorization server.
    remote_grants_max: int = 1000
    # Retry-After of a 503 receiver_unavailable (the receiver's server did not answer).
    remote_retry_after_seconds: int = 5
    # Remote payments (one STREAM connection each over a peer's link): Prepares one payment
    # keeps in flight at most, each Prepare's expiry, and the slippage below the quote's rate
    # a payment still accepts (a decimal fraction).
    stream_packets_in_flight: int = 20
    ilp_packet_expiry_seconds: int = 30
    slippage: str = "0.01"
    batch_max: int = 256
    batches_in_flight: int = 2
    # Every command to a shard is answered within this, queue wait included (503 after).
    shard_call_timeout_seconds: float = 10.0
    shard_max_active_entities: int = 100_000
    redis_timeout_seconds: float = 5.0
    timer_interval_seconds: float = 1.0
    timer_batch_max: int = 500
    body_max_bytes: int = 64 * 1024
    metadata_max_bytes: int = 4096  # the largest `metadata` accepted, in bytes of its JSON text (larger: 400)
    quote_validity_seconds: int = 300
    # A quote for a receiver on another server: its STREAM rate probe through the peer ends
    # within this (then 503 rate_probe_failed); its rate is the probe's low bound less
    # OPAY_SLIPPAGE.
    quote_probe_seconds: float = 5.0
    # Header the ASE's login proxy sets to the logged-in user; empty: the consent page never decides.
    consent_user_header: str = ""
    # The ASE's own consent app (gets ?grantId=&nonce=, decides via the operator API); empty: opay's page.
    consent_url: str = ""
    # Fund outgoing payments at once (a wallet that debits the sender itself); off: the
    # ASE funds each one through the operator API.
    auto_fund: bool = True
    # Empty: exchange rates come from the operator-set table only.
    rates_url: str = ""
    rates_cache_seconds: float = 15.0
    # Empty: no webhook events are queued.
    webhook_url: str = ""
    webhook_secret: str = ""
    webhook_max_attempts: int = 10
    webhook_timeout_seconds: float = 5.0
    webhook_concurrency: int = 16
    # Retry n waits min(max, base * 2^(n-1)) seconds, plus up to 10% jitter.
    webhook_backoff_base_seconds: float = 1.0
    webhook_backoff_max_seconds: float = 600.0
    webhook_poll_interval_seconds: float = 1.0
    webhook_batch_max: int = 100  # events claimed per poll (never more than free delivery slots)
    list_page_default: int = 20
    # Operator experience: logs, probes, connection at start, the pages a person sees.
    log_level: str = "info"  # debug, info, warning or error
    log_format: str = "auto"  # json, logfmt, or auto: logfmt when stderr is a terminal, else json
    connect_timeout_seconds: float = 10.0  # Redis or Ray not reached within this at start: exit 1 naming which
    readiness_timeout_seconds: float = 1.0  # GET /readyz: Redis and every shard must answer within this
    brand_name: str = "opay"  # the ASE's name on the consent page and the HTML views
    brand_logo_url: str = ""  # an https URL of the ASE's logo on those pages; empty: none

    @property
    def auth_server_url(self) -> str:
        return f"{self.public_url}/auth"


# A wallet address path as the operator API accepts it (opay/http/operator.py), not a route's.
_WALLET_PATH = r"(?!(.*/)?(jwks|did)\.json$)(?!(incoming-payments|outgoing-payments|quotes|outgoing-payment-grant|auth|ilp|\.well-known)(/|$))[a-z0-9][a-z0-9._~-]{0,63}(/[a-z0-9][a-z0-9._~-]{0,63}){0,7}"
_INT_FIELDS = {f for f, t in Settings.__annotations__.items() if t == "int"}
_FLOAT_FIELDS = {f for f, t in Settings.__annotations__.items() if t == "float"}
_BOOL_FIELDS = {f for f, t in Settings.__annotations__.items() if t == "bool"}


def from_environment(environ: dict[str, str] | None = None) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, object] = {}
    for field in Settings.__struct_fields__:
        raw = environ.get(f"OPAY_{field.upper()}")
        if raw is None or raw == "":
            continue
        if field in _BOOL_FIELDS:
            if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ValueError(f"OPAY_{field.upper()} must be true or false")
            values[field] = raw.lower() in ("1", "true", "yes")
        elif field in _INT_FIELDS:
            values[field] = int(raw)
        elif field in _FLOAT_FIELDS:
            values[field] = float(raw)  # durations only; money never passes through here
        else:
            values[field] = raw
    settings = Settings(**values)
    if settings.public_url.endswith("/"):
        raise ValueError("OPAY_PUBLIC_URL must not end with '/': the SDK joins paths onto it")
    if not 0 <= settings.ilp_asset_scale <= 255 or not settings.ilp_asset_code:
        raise ValueError("OPAY_ILP_ASSET_CODE must be set and OPAY_ILP_ASSET_SCALE must be 0..255")
    if not 0 <= settings.ilp_max_packet_amount <= 2**64 - 1:
        raise ValueError("OPAY_ILP_MAX_PACKET_AMOUNT must be 0 (no limit) or a uint64")
    if environ.get("OPAY_CONSENT_PAGE_DECIDES", "").lower() in ("1", "true", "yes"):
        # Removed; "false" is what every server now does. "true" would silently mean less than asked.
        raise ValueError(
            "OPAY_CONSENT_PAGE_DECIDES was removed: the consent page decides only for the wallet address's owner,"
            " as the login proxy's OPAY_CONSENT_USER_HEADER names them; or set OPAY_CONSENT_URL; the operator API always decides"
        )
    if settings.consent_url and urlsplit(settings.consent_url).scheme not in ("http", "https"):
        raise ValueError("OPAY_CONSENT_URL must be an http(s) URL")
    if settings.metadata_max_bytes < 2:
        raise ValueError("OPAY_METADATA_MAX_BYTES must be at least 2 (the size of {})")
    if settings.fetch_max_bytes <= 0 or settings.fetch_timeout_seconds <= 0:
        raise ValueError("OPAY_FETCH_MAX_BYTES and OPAY_FETCH_TIMEOUT_SECONDS must be positive")
    if re.fullmatch(_WALLET_PATH, settings.client_wallet_address) is None:
        raise ValueError("OPAY_CLIENT_WALLET_ADDRESS must be a wallet address path (lowercase segments, e.g. ase)")
    if settings.remote_grants_max <= 0 or settings.remote_retry_after_seconds <= 0:
        raise ValueError("OPAY_REMOTE_GRANTS_MAX and OPAY_REMOTE_RETRY_AFTER_SECONDS must be positive")
    if not 1 <= settings.stream_packets_in_flight <= 1000 or not 1 <= settings.ilp_packet_expiry_seconds <= 3600:
        raise ValueError("OPAY_STREAM_PACKETS_IN_FLIGHT must be 1..1000 and OPAY_ILP_PACKET_EXPIRY_SECONDS 1..3600")
    try:
        slippage = Fraction(settings.slippage)
    except (ValueError, ZeroDivisionError):
        slippage = Fraction(-1)
    if not 0 <= slippage < 1:
        raise ValueError("OPAY_SLIPPAGE must be a decimal in [0, 1)")
    if not 0 < settings.quote_probe_seconds <= 60:
        raise ValueError("OPAY_QUOTE_PROBE_SECONDS must be more than 0 and at most 60")
    from opay.net.fetch import parse_allow

    parse_allow(settings.fetch_allow)  # a ValueError names the entry that is not a host, IP or CIDR
    if not settings.operator_token:
        settings = msgspec.structs.replace(settings, operator_token=secrets.token_urlsafe(24))
    return settings
