"""Fetching a URL that a client supplied (its wallet address, a receiver) under one rule.

- https only; http too when `allow_insecure` (tests, local demos);
- the host is resolved once and every address is vetted: no loopback, private,
  link-local, multicast, reserved or unspecified address (IPv4-mapped and other IPv6
  forms that embed an IPv4 address count as that address) unless the host or the
  address is allow-listed; never one of the server's own listeners, allow-listed or not;
- the request goes to a vetted address itself (Host header and TLS SNI name the host),
  so a DNS answer that changes between the check and the connect cannot redirect it;
- redirects are never followed, the body is read up to `max_bytes` and no further, and
  the whole exchange (resolution included) has one deadline.

Errors say whose fault it is: `FetchUnusable` (the URL or its answer cannot be used;
`FetchRefused` when the policy refused the URL before any connection) is the requester's,
`FetchUnavailable` (no answer in time, connection refused, 5xx) is an outage worth a retry.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, TypeVar

import httpx
import msgspec

if TYPE_CHECKING:
    from opay.settings import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*$")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_EVERY_ADDRESS = {"", "0.0.0.0", "::"}
# Headers the fetcher sets itself, whatever the caller passes (content-length comes from the body).
_OWN_HEADERS = {"host", "accept", "accept-encoding", "content-length", "transfer-encoding"}


class FetchError(Exception):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


class FetchUnusable(FetchError):
    """The URL or its answer cannot be used: the fault of whoever supplied the URL."""


class FetchRefused(FetchUnusable):
    """The policy refused the URL before any connection was made."""


class FetchUnavailable(FetchError):
    """No usable answer for now (timeout, connection refused, 5xx): an outage, retry later."""


def parse_allow(raw: str) -> tuple[frozenset[str], tuple[Network, ...]]:
    """OPAY_FETCH_ALLOW: comma-separated hostnames, IP addresses and CIDRs."""
    hosts: set[str] = set()
    networks: list[Network] = []
    for item in raw.split(","):
        item = item.strip().lower()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        name = item.rstrip(".")
        if not _HOSTNAME.match(name):
            raise ValueError(f"OPAY_FETCH_ALLOW: {item!r} is neither a hostname, an IP address nor a CIDR")
        hosts.add(name)
    return frozenset(hosts), tuple(networks)


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches (IPv4-mapped, 6to4, NAT64), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def non_public(address: Address) -> str | None:
    """Why an address is not a public unicast one (loopback, private, ...); None if it is."""
    # An IPv6 form that embeds an IPv4 address is judged by the address it reaches.
    candidate = embedded_ipv4(address) or address
    if candidate.is_unspecified:
        return "unspecified"
    if candidate.is_loopback:
        return "loopback"
    if candidate.is_link_local:
        return "link-local"
    if candidate.is_multicast:
        return "multicast"
    if candidate.is_private:
        return "private"
    if candidate.is_reserved:
        return "reserved"
    if not candidate.is_global:
        return "non-public"
    return None


def _host_port(url: str) -> tuple[str, int]:
    parsed = httpx.URL(url)
    return parsed.raw_host.decode("ascii").lower().rstrip("."), parsed.port or (443 if parsed.scheme == "https" else 80)


@dataclass(frozen=True)
class Target:
    """A URL the policy accepted, with the addresses a request to it may connect to."""

    url: httpx.URL
    host: str  # ASCII (IDNA), lowercase, no trailing dot; an IP address without brackets
    port: int
    addresses: tuple[str, ...]


class FetchPolicy:
    def __init__(
        self,
        *,
        allow_insecure: bool = False,
        allow: str = "",
        own_listeners: tuple[tuple[str, int], ...] = (),
        max_bytes: int = 64 * 1024,
        timeout_seconds: float = 2.0,
    ) -> None:
        self.allow_insecure = allow_insecure
        self.allow_hosts, self.allow_networks = parse_allow(allow)
        # (host, port) the server listens on or is reached at; host "0.0.0.0"/"::" is every local address.
        self.own_listeners = tuple((host.lower().strip("[]").rstrip("."), port) for host, port in own_listeners)
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds
        self._own_addresses: set[tuple[Address, int]] | None = None
        self._every_address_ports = {port for host, port in self.own_listeners if host in _EVERY_ADDRESS}

    @classmethod
    def from_settings(cls, settings: "Settings") -> "FetchPolicy":
        return cls(
            allow_insecure=settings.allow_insecure_fetch,
            allow=settings.fetch_allow,
            own_listeners=(
                (settings.host, settings.port),
                (settings.operator_host, settings.operator_port),
                _host_port(settings.public_url),
            ),
            max_bytes=settings.fetch_max_bytes,
            timeout_seconds=settings.fetch_timeout_seconds,
        )

    async def vet(self, url: str) -> Target:
        """The target of `url` if the policy lets it be fetched, else FetchRefused (FetchUnavailable: DNS is down)."""
        try:
            parsed = httpx.URL(url)
            host = parsed.raw_host.decode("ascii").lower().rstrip(".")
        except (httpx.InvalidURL, UnicodeError):
            raise FetchRefused(url, "not a valid URL") from None
        if parsed.scheme != "https" and not (parsed.scheme == "http" and self.allow_insecure):
            raise FetchRefused(url, "only https URLs are fetched" + ("" if parsed.scheme != "http" else " (http needs OPAY_ALLOW_INSECURE_FETCH)"))
        if not host:
            raise FetchRefused(url, "the URL has no host")
        if parsed.userinfo:
            raise FetchRefused(url, "the URL must not carry credentials")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        if (host, port) in self.own_listeners:
            raise FetchRefused(url, f"{host}:{port} is one of this server's own listeners")
        addresses = await self._resolve(url, host, port)
        own = await self._own()
        allowed_host = host in self.allow_hosts
        vetted: list[str] = []
        refusals: list[str] = []
        for address in addresses:
            mapped = embedded_ipv4(address)
            named = host if _is_ip(host) else f"{host} resolves to {address}, which"
            if (address, port) in own or (mapped is not None and (mapped, port) in own) or self._is_every_address_port(address, port):
                raise FetchRefused(url, f"{named} is one of this server's own listeners (port {port})")
            reason = non_public(address)
            if reason is not None and not (allowed_host or self._allowed(address) or (mapped is not None and self._allowed(mapped))):
                article = "an" if reason[0] in "aeiou" else "a"
                refusals.append(f"{named} is {article} {reason} address, not in OPAY_FETCH_ALLOW")
                continue
            vetted.append(str(address))
        if not vetted:
            raise FetchRefused(url, refusals[0] if refusals else f"{host} resolves to no address")
        return Target(parsed, host, port, tuple(dict.fromkeys(vetted)))

    def _allowed(self, address: Address) -> bool:
        return any(address.version == network.version and address in network for network in self.allow_networks)

    def _is_every_address_port(self, address: Address, port: int) -> bool:
        # A listener on 0.0.0.0/:: answers on loopback and on every address of this host.
        if port not in self._every_address_ports:
            return False
        mapped = embedded_ipv4(address) or address
        return mapped.is_loopback or mapped.is_unspecified

    async def _resolve(self, url: str, host: str, port: int) -> list[Address]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except socket.gaierror as error:
            if error.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                raise FetchRefused(url, f"{host} does not resolve") from None
            raise FetchUnavailable(url, f"resolving {host} failed: {error}") from None
        except UnicodeError:
            raise FetchRefused(url, "not a valid host name") from None
        found: list[Address] = []
        for family, _, _, _, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6):
                found.append(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
        return found

    async def _own(self) -> set[tuple[Address, int]]:
        """The addresses the server's own listeners answer on, resolved once."""
        if self._own_addresses is not None:
            return self._own_addresses
        loop = asyncio.get_running_loop()
        own: set[tuple[Address, int]] = set()
        complete = True
        for host, port in self.own_listeners:
            for name in [socket.gethostname()] if host in _EVERY_ADDRESS else [host]:
                try:
                    addresses = [ipaddress.ip_address(name)]
                except ValueError:
                    try:
                        infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
                    except (OSError, UnicodeError):
                        complete = False  # tried again on the next fetch
                        continue
                    addresses = [
                        ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
                        for family, _, _, _, sockaddr in infos
                        if family in (socket.AF_INET, socket.AF_INET6)
                    ]
                for address in addresses:
                    own.add((address, port))
                    if (mapped := embedded_ipv4(address)) is not None:
                        own.add((mapped, port))
        if complete:
            self._own_addresses = own
        return own


class Fetched(msgspec.Struct, frozen=True):
    status: int
    content_type: str
    body: bytes


class Fetcher:
    """Requests to client-supplied URLs under a FetchPolicy; one per process, closed with aclose()."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        # No proxies from the environment (they would defeat the pinned address), no
        # redirects, no connection reuse across hosts that share an address.
        self._http = httpx.AsyncClient(
            trust_env=False,
            follow_redirects=False,
            timeout=policy.timeout_seconds,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=0),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get(self, url: str, *, accept: str = "application/json") -> Fetched:
        """Any final answer but a redirect or an outage (5xx, 408, 429), its body bounded."""
        return await self.request("GET", url, accept=accept)

    async def request(
        self, method: str, url: str, *, body: bytes = b"", headers: Mapping[str, str] | None = None, accept: str = "application/json"
    ) -> Fetched:
        """`get` for any method, with the caller's headers (a signature, a token) and body:
        the same policy, one deadline, no redirects, the answer bounded. The caller's
        headers never choose the Host, the encoding or the length."""
        try:
            async with asyncio.timeout(self.policy.timeout_seconds):
                target = await self.policy.vet(url)
                return await self._send(method, url, target, accept, body, headers or {})
        except TimeoutError:
            raise FetchUnavailable(url, f"no complete answer within {self.policy.timeout_seconds:g} s") from None

    async def fetch_json(self, url: str, type: type[T]) -> T:
        """The 200 answer's body decoded as `type`; any other answer is FetchUnusable."""
        fetched = await self.get(url)
        if fetched.status != 200:
            raise FetchUnusable(url, f"answered {fetched.status}")
        try:
            return msgspec.json.decode(fetched.body, type=type)
        except msgspec.MsgspecError as error:
            raise FetchUnusable(url, f"the answer is not the expected JSON: {error}") from None

    async def _send(self, method: str, url: str, target: Target, accept: str, body: bytes, extra: Mapping[str, str]) -> Fetched:
        tls_name = target.host if target.url.scheme == "https" and not _is_ip(target.host) else None
        last: Exception | None = None
        headers = {k: v for k, v in extra.items() if k.lower() not in _OWN_HEADERS}
        headers.update({"Host": target.url.netloc.decode("ascii"), "Accept": accept, "Accept-Encoding": "identity"})
        for address in target.addresses:
            request = self._http.build_request(
                method,
                target.url.copy_with(host=address, fragment=None),
                headers=headers,
                content=body if body or method not in ("GET", "HEAD", "DELETE") else None,
                extensions={"sni_hostname": tls_name} if tls_name else None,
            )
            try:
                response = await self._http.send(request, stream=True)
            except httpx.ConnectError as error:
                if _certificate_failed(error):
                    raise FetchUnusable(url, f"its TLS certificate is not valid for {target.host}") from None
                last = error
                continue
            except httpx.TimeoutException:
                raise FetchUnavailable(url, f"no answer within {self.policy.timeout_seconds:g} s") from None
            except httpx.HTTPError as error:
                raise FetchUnavailable(url, f"the request failed: {error!r}") from None
            try:
                return await self._read(url, response)
            except httpx.TimeoutException:
                raise FetchUnavailable(url, f"no complete answer within {self.policy.timeout_seconds:g} s") from None
            except httpx.HTTPError as error:
                raise FetchUnavailable(url, f"reading the answer failed: {error!r}") from None
            finally:
                await response.aclose()
        raise FetchUnavailable(url, f"could not connect to {target.host}:{target.port}: {last!r}")

    async def _read(self, url: str, response: httpx.Response) -> Fetched:
        status = response.status_code
        if 300 <= status < 400:
            raise FetchUnusable(url, f"answered {status}, a redirect (never followed)")
        if status >= 500 or status in (408, 429):
            raise FetchUnavailable(url, f"answered {status}")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise FetchUnusable(url, f"answered with content-encoding {encoding!r} (only identity is accepted)")
        limit = self.policy.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise FetchUnusable(url, f"the answer is larger than {limit} bytes")
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > limit:
                raise FetchUnusable(url, f"the answer is larger than {limit} bytes")
        return Fetched(status, response.headers.get("content-type", ""), bytes(body))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _certificate_failed(error: BaseException) -> bool:
    seen: Any = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
