"""One settings object, read from OPAY_* environment variables.

Every field has an embedded default so `opay serve` needs no configuration; each
limit the server enforces is named here so an operator can see and change it.
Each field is declared once with its constraints and a one-line description:
from_environment validates against them, `opay config` and the README's settings
table (`opay config --markdown`) are printed from them.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import secrets
from fractions import Fraction
from typing import Annotated, Literal, get_type_hints

import msgspec
from msgspec import Meta


class SettingsError(ValueError):
    """One line naming the variable, its value and what is allowed."""


# Shapes several settings share; a field adds its own description on top.
Port = Annotated[int, Meta(ge=1, le=65535)]
Positive = Annotated[int, Meta(ge=1)]
Seconds = Annotated[float, Meta(gt=0)]
CacheSeconds = Annotated[float, Meta(ge=0)]
HttpUrl = Annotated[str, Meta(pattern=r"^https?://[^\s/?#]+[^\s]*$", extra={"allowed": "an http(s) URL"})]
# A wallet address path as the operator API accepts it (opay/http/operator.py), not a route's.
WALLET_PATH = r"(?!(.*/)?(jwks|did)\.json$)(?!(incoming-payments|outgoing-payments|quotes|outgoing-payment-grant|auth|ilp|\.well-known)(/|$))[a-z0-9][a-z0-9._~-]{0,63}(/[a-z0-9][a-z0-9._~-]{0,63}){0,7}"


def _doc(description: str, **constraints: object) -> Meta:
    return Meta(description=description, **constraints)  # type: ignore[arg-type]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    public_url: Annotated[str, Meta(
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*[^\s/?#])?$",
        extra={"allowed": "an http(s) URL without a trailing / (the SDK joins paths onto it)"},
        description="the URL clients reach the public API at; wallet addresses are {public_url}/{path}",
    )] = "http://127.0.0.1:8000"
    host: Annotated[str, _doc("address the public API listens on", min_length=1)] = "127.0.0.1"
    port: Annotated[Port, _doc("port of the public API")] = 8000
    operator_host: Annotated[str, _doc("address the operator API listens on (keep it private)", min_length=1)] = "127.0.0.1"
    operator_port: Annotated[Port, _doc("port of the operator API (also /healthz, /readyz, /metrics)")] = 8001
    operator_token: Annotated[str, _doc(
        "Bearer token of the operator API; empty: a random one, printed at start",
        pattern=r"^[A-Za-z0-9._~+/=-]+$", extra={"allowed": "Bearer token characters: letters, digits and -._~+/="},
    )] = ""
    operator_url: Annotated[HttpUrl, _doc(
        "where `opay keys` and the examples reach the operator API; empty: http://{operator_host}:{operator_port}"
    )] = ""
    data_dir: Annotated[str, _doc(
        "directory of the embedded Redis's data (AOF) and of keys made by `opay keys new`", min_length=1
    )] = "./var"
    redis_url: Annotated[str, _doc(
        "Redis to use (redis://host:port/db); empty: opay starts its own redis-server under data_dir",
        pattern=r"^(rediss?|unix)://", extra={"allowed": "a redis://, rediss:// or unix:// URL"},
    )] = ""
    redis_port: Annotated[Port, _doc("port of the embedded redis-server (when redis_url is empty)")] = 6399
    ray_address: Annotated[str, _doc(
        "Ray cluster to join (host:port); empty: a Ray of opay's own. Ray 2.60 clusters use token auth: also set RAY_AUTH_MODE=token"
    )] = ""
    shards: Annotated[int, _doc(
        "shard actors; 0: the count pinned in Redis, else one per CPU (then pinned); a process started with another count refuses to start",
        ge=0, le=4096,
    )] = 0
    frontend_processes: Annotated[int, _doc(
        "front-end processes serving the same ports (SO_REUSEPORT) under one supervisor that replaces any that dies;"
        " 0: one per CPU; 1: a single process, no supervisor",
        ge=0, le=256,
    )] = 0
    ilp_address: Annotated[str, _doc(
        "this server's ILP address, the prefix of every receiving address",
        pattern=r"^(g|private|example|peer|self|test[1-3]?|local)(\.[A-Za-z0-9_~-]+)+$",
        max_length=1000, extra={"allowed": "an ILP address such as test.opay or g.example.opay"},
    )] = "test.opay"
    stream_secret: Annotated[str, _doc(
        "STREAM secret (base64url of 32 bytes) shared by every front end; empty: generated on first start and kept in Redis",
        pattern=r"^[A-Za-z0-9_-]{43}$", extra={"allowed": "base64url of 32 bytes (43 characters)"},
    )] = ""
    ilp_incoming_tokens: Annotated[str, _doc(
        "comma-separated Bearer tokens of the peers allowed to POST packets to {public_url}/ilp; empty: every packet is refused 401",
        pattern=r"^ *[A-Za-z0-9._~+/=-]+( *, *[A-Za-z0-9._~+/=-]+)* *$",
        extra={"allowed": "comma-separated Bearer tokens: letters, digits and -._~+/="},
    )] = ""
    ilp_asset_code: Annotated[str, _doc(
        "asset of the peering link (told to peers by IL-DCP); only incoming payments in it receive over ILP",
        min_length=1, max_length=32,
    )] = "USD"
    ilp_asset_scale: Annotated[int, _doc("scale of that asset", ge=0, le=255)] = 2
    ilp_max_packet_amount: Annotated[int, _doc(
        "a larger Prepare is rejected F08; 0: no limit", ge=0, extra={"allowed": "0..2^64-1 (a uint64)"}
    )] = 0
    incoming_payment_default_expiry_seconds: Annotated[Positive, _doc(
        "expiry of an incoming payment created without expiresAt"
    )] = 24 * 3600
    incoming_payment_max_expiry_seconds: Annotated[Positive, _doc("the latest expiresAt accepted, from now")] = 30 * 24 * 3600
    access_token_seconds: Annotated[Positive, _doc("lifetime of a GNAP access token")] = 3600
    signature_max_age_seconds: Annotated[Positive, _doc("an HTTP message signature older than this is refused")] = 300
    signature_max_skew_seconds: Annotated[int, _doc("a signature created this far in the future is still accepted", ge=0)] = 30
    introspection_url: Annotated[HttpUrl, _doc(
        "token introspection of a separate authorization server; empty: the one in this process"
    )] = ""
    introspection_cache_seconds: Annotated[CacheSeconds, _doc(
        "how long an active introspection answer is reused; revocation drops it at once"
    )] = 5.0
    introspection_timeout_seconds: Annotated[Seconds, _doc("deadline of one introspection call")] = 2.0
    jwks_cache_seconds: Annotated[CacheSeconds, _doc("how long a client's fetched keys (jwks.json) are reused")] = 30.0
    allow_insecure_fetch: Annotated[bool, _doc(
        "fetch client-supplied URLs over http as well as https (tests and local demos only)"
    )] = False
    fetch_allow: Annotated[str, _doc(
        "comma-separated hosts, IPs and CIDRs that fetches may reach though loopback, private or link-local"
    )] = ""
    fetch_max_bytes: Annotated[Positive, _doc("a longer fetched answer is refused, never read to its end")] = 64 * 1024
    fetch_timeout_seconds: Annotated[Seconds, _doc("one deadline per fetch: resolution, connect and whole body")] = 2.0
    client_wallet_address: Annotated[str, _doc(
        "path of this server's own client wallet address (created at start), whose keys sign its calls to other servers",
        pattern=f"^(?:{WALLET_PATH})$",
        extra={"allowed": "a wallet address path: lowercase segments such as ase or ops/client"},
    )] = "ase"
    remote_grants_max: Annotated[Positive, _doc("access tokens to other servers kept, one per authorization server")] = 1000
    remote_retry_after_seconds: Annotated[Positive, _doc(
        "Retry-After of a 503 receiver_unavailable (the receiver's server did not answer)"
    )] = 5
    stream_packets_in_flight: Annotated[int, _doc(
        "Prepares one remote payment keeps in flight at most", ge=1, le=1000
    )] = 20
    ilp_packet_expiry_seconds: Annotated[int, _doc("expiry of each Prepare a remote payment sends", ge=1, le=3600)] = 30
    slippage: Annotated[str, _doc(
        "how far below the quote's rate a remote payment still delivers (a decimal fraction)",
        extra={"allowed": "a decimal in [0, 1)"},
    )] = "0.01"
    batch_max: Annotated[Positive, _doc("commands one shard writes to Redis in one batch at most")] = 256
    batches_in_flight: Annotated[Positive, _doc("batches one shard has in flight to Redis at once")] = 2
    shard_call_timeout_seconds: Annotated[Seconds, _doc(
        "every command to a shard is answered within this, queue wait included (503 after)"
    )] = 10.0
    shard_max_active_entities: Annotated[Positive, _doc("entities one shard keeps in memory; the least recent are evicted")] = 100_000
    redis_timeout_seconds: Annotated[Seconds, _doc("deadline of one Redis call")] = 5.0
    redis_wait_replicas: Annotated[int, _doc(
        "on Redis Cluster: replicas that must hold a write (WAIT, within half of redis_timeout_seconds) before it is"
        " acknowledged, so a failover loses nothing acknowledged; 0: the master's word is enough", ge=0, le=16,
    )] = 1
    timer_interval_seconds: Annotated[Seconds, _doc("how often expiries and retries due are looked for")] = 1.0
    timer_batch_max: Annotated[Positive, _doc("due timers handled per tick at most")] = 500
    body_max_bytes: Annotated[Positive, _doc("a larger request body is refused 413")] = 64 * 1024
    metadata_max_bytes: Annotated[int, _doc(
        "the largest `metadata` (a JSON object, at most 16 levels deep) of a payment, in bytes of its JSON text (larger: 400)", ge=2,
        extra={"allowed": "2 or more (the size of {})"},
    )] = 4096
    quote_validity_seconds: Annotated[Positive, _doc("how long a quote can be paid")] = 300
    quote_probe_seconds: Annotated[float, _doc(
        "a quote for a receiver on another server ends its STREAM rate probe within this (then 503 rate_probe_failed)",
        gt=0, le=60,
    )] = 5.0
    consent_user_header: Annotated[str, _doc(
        "header the ASE's login proxy in front of /auth/interact/ sets to the logged-in user; the page decides for the wallet's"
        " owner; empty: it never decides",
        pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", extra={"allowed": "an HTTP header name"},
    )] = ""
    consent_url: Annotated[HttpUrl, _doc(
        "the ASE's own consent app (gets ?grantId=&nonce=, decides via the operator API); empty: opay's page"
    )] = ""
    auto_fund: Annotated[bool, _doc(
        "fund outgoing payments at once (the wallet debits the sender itself); false: the ASE funds each through the operator API"
    )] = True
    rates_url: Annotated[HttpUrl, _doc("exchange rates service (Rafiki's format); empty: the operator-set table only")] = ""
    rates_cache_seconds: Annotated[CacheSeconds, _doc("how long fetched rates are reused")] = 15.0
    webhook_url: Annotated[HttpUrl, _doc("where webhook events are POSTed; empty: none are queued")] = ""
    webhook_secret: Annotated[str, _doc("HMAC key of the Rafiki-style webhook signature; empty: unsigned")] = ""
    webhook_max_attempts: Annotated[Positive, _doc("deliveries tried before an event is dead")] = 10
    webhook_timeout_seconds: Annotated[Seconds, _doc("deadline of one delivery")] = 5.0
    webhook_concurrency: Annotated[Positive, _doc("deliveries in flight at once")] = 16
    webhook_backoff_base_seconds: Annotated[Seconds, _doc(
        "retry n waits min(max, base * 2^(n-1)) seconds, plus up to 10% jitter"
    )] = 1.0
    webhook_backoff_max_seconds: Annotated[Seconds, _doc("the longest wait between two deliveries")] = 600.0
    webhook_poll_interval_seconds: Annotated[Seconds, _doc("how often due deliveries are looked for")] = 1.0
    webhook_batch_max: Annotated[Positive, _doc("events claimed per poll (never more than free delivery slots)")] = 100
    list_page_default: Annotated[int, _doc("page size of a list without first/last", ge=1, le=100)] = 20
    # Operator experience: logs, probes, connection at start, the pages a person sees.
    log_level: Annotated[Literal["debug", "info", "warning", "error"], _doc("the least severe log line written")] = "info"
    log_format: Annotated[Literal["json", "logfmt", "auto"], _doc(
        "json, logfmt, or auto: logfmt when stderr is a terminal, else json"
    )] = "auto"
    connect_timeout_seconds: Annotated[Seconds, _doc("Redis or Ray not reached within this at start: exit 1 naming which")] = 10.0
    readiness_timeout_seconds: Annotated[Seconds, _doc("GET /readyz: Redis and every shard must answer within this")] = 1.0
    brand_name: Annotated[str, _doc("the ASE's name on the consent page and the HTML views", min_length=1, max_length=100)] = "opay"
    brand_logo_url: Annotated[HttpUrl, _doc("URL of the ASE's logo on those pages; empty: none")] = ""

    @property
    def auth_server_url(self) -> str:
        return f"{self.public_url}/auth"

    @property
    def operator_api_url(self) -> str:
        if self.operator_url:
            return self.operator_url.rstrip("/")
        host = "127.0.0.1" if self.operator_host in ("0.0.0.0", "::", "") else self.operator_host
        return f"http://{host}:{self.operator_port}"


# Never printed: `opay config` masks them, a refused value is not echoed.
SECRETS = frozenset({"operator_token", "stream_secret", "ilp_incoming_tokens", "webhook_secret"})
# Variables that once were settings; set, they are refused with what to do instead.
REMOVED = {
    "consent_page_decides": "was removed: the consent page decides only for the wallet address's owner,"
    " as the login proxy's OPAY_CONSENT_USER_HEADER names them; or set OPAY_CONSENT_URL; the operator API always decides",
    "jwks_fetch_timeout_seconds": "was renamed OPAY_FETCH_TIMEOUT_SECONDS",
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class Setting(msgspec.Struct, frozen=True):
    """One setting as `opay config` and the README describe it."""

    name: str
    variable: str
    default: object
    description: str
    allowed: str
    secret: bool


def variable(name: str) -> str:
    return f"OPAY_{name.upper()}"


def _allowed(info: msgspec.inspect.Type, extra: dict) -> str:
    if "allowed" in extra:
        return str(extra["allowed"])
    if isinstance(info, msgspec.inspect.BoolType):
        return "true or false"
    if isinstance(info, msgspec.inspect.LiteralType):
        return ", ".join(str(v) for v in info.values)
    if isinstance(info, (msgspec.inspect.IntType, msgspec.inspect.FloatType)):
        low = f"{info.ge} or more" if info.ge is not None else f"more than {info.gt}" if info.gt is not None else ""
        high = f"at most {info.le}" if info.le is not None else f"less than {info.lt}" if info.lt is not None else ""
        if isinstance(info, msgspec.inspect.IntType) and info.ge is not None and info.le is not None:
            return f"{info.ge}..{info.le}"
        kind = "an integer" if isinstance(info, msgspec.inspect.IntType) else "a number"
        return ", ".join(part for part in (low, high) if part) or kind
    if isinstance(info, msgspec.inspect.StrType):
        parts = ["non-empty" if info.min_length == 1 else f"at least {info.min_length} characters"] if info.min_length else []
        parts += [f"at most {info.max_length} characters"] if info.max_length else []
        parts += [f"matching {info.pattern}"] if info.pattern else []
        return ", ".join(parts) or "any text"
    return "any value"


def _fields() -> dict[str, tuple[msgspec.inspect.Field, msgspec.inspect.Type, dict, str]]:
    described = {}
    for field in msgspec.inspect.type_info(Settings).fields:  # type: ignore[union-attr]
        info, extra, description = field.type, {}, ""
        if isinstance(info, msgspec.inspect.Metadata):
            extra = info.extra or {}
            description = (info.extra_json_schema or {}).get("description", "")
            info = info.type
        described[field.name] = (field, info, extra, description)
    return described


_FIELDS = _fields()
_HINTS = get_type_hints(Settings, include_extras=True)


def describe() -> list[Setting]:
    return [
        Setting(name, variable(name), field.default, description, _allowed(info, extra), name in SECRETS)
        for name, (field, info, extra, description) in _FIELDS.items()
    ]


def shown(name: str, value: object) -> str:
    """A value as it may be printed: secrets masked, text quoted only where it must be."""
    if name in SECRETS:
        text = str(value)
        return "" if not text else "****" + text[-2:] if len(text) >= 12 else "(set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if not text:
        return ""
    if len(text) > 80:
        text = text[:77] + "..."
    return text if text and text.isprintable() and " " not in text else json.dumps(text)


def _refuse(name: str, raw: str, problem: str, allowed: str | None = None) -> SettingsError:
    info, extra = _FIELDS[name][1], _FIELDS[name][2]
    allowed = _allowed(info, extra) if allowed is None else allowed
    return SettingsError(f"{variable(name)}={shown(name, raw)}: {problem} (allowed: {allowed})")


def _parse(name: str, raw: str) -> object:
    info = _FIELDS[name][1]
    value: object = raw
    if isinstance(info, msgspec.inspect.BoolType):
        if raw.lower() not in _TRUE + _FALSE:
            raise _refuse(name, raw, "not true or false", "true, false, 1, 0, yes, no, on, off")
        value = raw.lower() in _TRUE
    elif isinstance(info, msgspec.inspect.IntType):
        if re.fullmatch(r"[+-]?[0-9]{1,30}", raw.strip()) is None:
            raise _refuse(name, raw, "not an integer")
        value = int(raw)
    elif isinstance(info, msgspec.inspect.FloatType):
        try:
            value = float(raw)  # durations only; money never passes through here
        except ValueError:
            raise _refuse(name, raw, "not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise _refuse(name, raw, "not a finite number")
    try:
        return msgspec.convert(value, _HINTS[name])
    except msgspec.ValidationError:
        problem = "out of range" if isinstance(info, (msgspec.inspect.IntType, msgspec.inspect.FloatType)) else "not allowed"
        raise _refuse(name, raw, problem) from None


def _closest(name: str) -> str:
    match = difflib.get_close_matches(name, list(_FIELDS), n=1, cutoff=0.6)
    return f"did you mean {variable(match[0])}?" if match else "see `opay config` for every setting"


def from_environment(environ: dict[str, str] | None = None) -> Settings:
    """Every OPAY_* variable checked before anything starts; the first bad one raises SettingsError."""
    settings = read_environment(environ)
    if not settings.operator_token:
        settings = msgspec.structs.replace(settings, operator_token=secrets.token_urlsafe(24))
    return settings


def read_environment(environ: dict[str, str] | None = None) -> Settings:
    """The settings as configured: an empty operator_token stays empty (`opay config` shows so)."""
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, object] = {}
    for key in sorted(environ):
        if not key.startswith("OPAY_"):
            continue
        name, raw = key[5:].lower(), environ[key]
        if name in REMOVED:
            # "false" is what every server now does; anything else would silently mean less than asked.
            if name != "consent_page_decides" or raw.lower() not in _FALSE + ("",):
                raise SettingsError(f"{key}={shown(name, raw)}: {REMOVED[name]}")
            continue
        if name not in _FIELDS:
            raise SettingsError(f"{key}={shown(name, raw)}: unknown setting ({_closest(name)})")
        if raw != "":
            values[name] = _parse(name, raw)
    settings = Settings(**values)  # type: ignore[arg-type]
    _check_together(settings)
    return settings


def _check_together(s: Settings) -> None:
    """What one field's constraints cannot say."""
    try:
        slippage = Fraction(s.slippage)
    except (ValueError, ZeroDivisionError):
        raise _refuse("slippage", s.slippage, "not a decimal") from None
    if not 0 <= slippage < 1:
        raise _refuse("slippage", s.slippage, "out of range")
    if s.ilp_max_packet_amount > 2**64 - 1:  # msgspec's bounds stop at int64
        raise _refuse("ilp_max_packet_amount", str(s.ilp_max_packet_amount), "out of range")
    if s.incoming_payment_default_expiry_seconds > s.incoming_payment_max_expiry_seconds:
        raise _refuse(
            "incoming_payment_default_expiry_seconds", str(s.incoming_payment_default_expiry_seconds),
            "longer than the maximum", f"at most OPAY_INCOMING_PAYMENT_MAX_EXPIRY_SECONDS={s.incoming_payment_max_expiry_seconds}",
        )
    if s.webhook_backoff_base_seconds > s.webhook_backoff_max_seconds:
        raise _refuse(
            "webhook_backoff_base_seconds", str(s.webhook_backoff_base_seconds),
            "longer than the maximum", f"at most OPAY_WEBHOOK_BACKOFF_MAX_SECONDS={s.webhook_backoff_max_seconds}",
        )
    from opay.net.fetch import parse_allow

    try:
        parse_allow(s.fetch_allow)
    except ValueError as error:  # it names the entry that is not a host, IP or CIDR
        problem = str(error).removeprefix("OPAY_FETCH_ALLOW: ")
        raise _refuse("fetch_allow", s.fetch_allow, problem, "hostnames, IP addresses and CIDRs, comma-separated") from None
