"""Safe fetching: nothing internal, nothing huge, nothing that is not an image.

Two layers:

- :class:`SafeTransport` is the httpx transport every crawler client uses. It
  resolves each host itself at connect time, refuses non-public addresses
  (unless ``allow_internal`` names the host or a CIDR holding the address) and
  connects to the validated IP, keeping the original Host header and TLS SNI.
  Because the check happens on every connection, every redirect hop is checked
  too, and a DNS answer that changes between checks (rebinding) cannot slip
  through.
- :func:`fetch_page` and :class:`SafeFetcher` read bodies as a stream with a
  size cap, follow at most ``max_redirects`` redirects and map transport
  failures to :mod:`crawler.errors`. ``SafeFetcher.fetch_image`` sniffs the
  image type from the bytes; Content-Type is never trusted.

One deadline covers a whole exchange (every connect, TLS handshake, request
write, header line and body chunk, across redirects): :func:`deadline` arms
it, and the connections :class:`SafeTransport` opens read it on every socket
operation, each of which may wait only for what is left. A server that drips
one header line or one body byte just inside the read timeout therefore
cannot hold a fetch longer than the budget (three read timeouts, see
:func:`total_budget`). The clock starts at the first socket operation, so the
politeness layer's pacing before a request is not counted against the
server. DNS resolution is the one step it cannot interrupt.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpcore
import httpx

from config.settings import CrawlerSettings
from crawler.errors import (
    BlockedAddress,
    FetchError,
    HTTPStatusError,
    NotAnImage,
    RateLimited,
    ServerError,
    Timeout,
    TooLarge,
    TooManyRedirects,
    TransientFetchError,
)

__all__ = [
    "AddressPolicy",
    "FetchedImage",
    "Page",
    "Params",
    "SafeFetcher",
    "SafeTransport",
    "deadline",
    "fetch_page",
    "policy_of",
    "raise_for_status",
    "sniff_image_type",
    "user_agent",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Query parameters: a mapping, or pairs when a key repeats (``id[]=1&id[]=2``).
Params = Mapping[str, Any] | Sequence[tuple[str, Any]] | None
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges that are public by the `is_*` flags' logic but must never be contacted.
_EXTRA_BLOCKED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "169.254.0.0/16",  # link-local, incl. 169.254.169.254 cloud metadata
        "192.0.0.0/24",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "64:ff9b::/96",  # NAT64: embeds an IPv4 address
        "64:ff9b:1::/48",
        "2002::/16",  # 6to4: embeds an IPv4 address
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
        "fd00:ec2::254/128",  # AWS IPv6 metadata
    )
)


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in ipaddress.ip_network("::/96") and int(ip) > 1:  # deprecated IPv4-compatible
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d
            return is_public_address(ip.ipv4_mapped)
        inner = _embedded_v4(ip)
        if inner is not None and not is_public_address(inner):
            return False
    if (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    ):
        return False
    return not any(ip.version == net.version and ip in net for net in _EXTRA_BLOCKED)


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses a crawler may connect to.

    ``allow`` entries are host names (exact, case-insensitive) or IP
    addresses/CIDR ranges; anything public is always allowed.
    """

    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_list(cls, allow: Iterable[str]) -> AddressPolicy:
        hosts: set[str] = set()
        nets: list[IPNetwork] = []
        for raw in allow:
            entry = raw.strip()
            if not entry:
                continue
            try:
                nets.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(nets))

    def check(self, host: str, ip: IPAddress) -> None:
        """Raise BlockedAddress unless ``host`` may be reached at ``ip``."""
        if is_public_address(ip):
            return
        if host.lower().rstrip(".") in self.allow_hosts:
            return
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        for cand in candidates:
            if any(cand.version == net.version and cand in net for net in self.allow_networks):
                return
        raise BlockedAddress(f"refusing to connect to {host} at non-public address {ip}", host)


class _Deadline:
    """The time left to one exchange; the clock starts at its first socket operation."""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.ends: float | None = None

    def remaining(self) -> float:
        now = time.monotonic()
        if self.ends is None:
            self.ends = now + self.budget
        return self.ends - now

    def expired(self) -> bool:
        return self.ends is not None and time.monotonic() >= self.ends

    def bound(self, timeout: float | None, kind: type[httpcore.TimeoutException]) -> float:
        """``timeout`` shortened to what is left; ``kind`` raised when nothing is."""
        left = self.remaining()
        if left <= 0:
            raise kind(f"the exchange used up its {self.budget:.1f}s deadline")
        return left if timeout is None else min(timeout, left)


_DEADLINE: ContextVar[_Deadline | None] = ContextVar("artwatch_fetch_deadline", default=None)


@contextmanager
def deadline(seconds: float | None) -> Iterator[_Deadline | None]:
    """Bound every socket operation of the :class:`SafeTransport` connections
    used inside the block to ``seconds`` in all (None: no bound). Nested use
    keeps the outer, earlier deadline."""
    outer = _DEADLINE.get()
    if seconds is None or outer is not None:
        yield outer
        return
    token = _DEADLINE.set(_Deadline(seconds))
    try:
        yield _DEADLINE.get()
    finally:
        _DEADLINE.reset(token)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read, write and TLS handshake waits at most for
    what is left of the current exchange's deadline. Pooled connections are
    reused by later exchanges, so the deadline is looked up per operation."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        limit = _DEADLINE.get()
        if limit is not None:
            timeout = limit.bound(timeout, httpcore.ReadTimeout)
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        limit = _DEADLINE.get()
        if limit is not None:
            timeout = limit.bound(timeout, httpcore.WriteTimeout)
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        limit = _DEADLINE.get()
        if limit is not None:
            timeout = limit.bound(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _SafeBackend(httpcore.NetworkBackend):
    """Resolves once, validates every address, connects to a validated IP."""

    def __init__(self, policy: AddressPolicy, resolver: Any = None) -> None:
        self._policy = policy
        self._inner = httpcore.SyncBackend()
        self._resolve = resolver or socket.getaddrinfo

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = self._resolve(host.strip("[]"), port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses: list[IPAddress] = []
        for info in infos:
            raw = str(info[4][0]).split("%", 1)[0]
            addresses.append(ipaddress.ip_address(raw))
        if not addresses:
            raise httpcore.ConnectError(f"no address for {host}")
        # Every address must pass: a mixed answer is how rebinding attacks hide.
        for ip in addresses:
            self._policy.check(host, ip)
        last_exc: Exception | None = None
        limit = _DEADLINE.get()
        for ip in addresses:
            try:
                return _DeadlineStream(self._inner.connect_tcp(
                    str(ip),
                    port,
                    timeout=limit.bound(timeout, httpcore.ConnectTimeout) if limit else timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                ))
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_exc = exc
        assert last_exc is not None
        raise last_exc

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise BlockedAddress(f"refusing unix socket {path}", path)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class SafeTransport(httpx.HTTPTransport):
    """httpx transport that validates the peer address of every connection."""

    def __init__(self, policy: AddressPolicy, *, resolver: Any = None, **kwargs: Any) -> None:
        self.policy = policy
        kwargs.pop("proxy", None)  # a proxy would connect on our behalf, unchecked
        super().__init__(**kwargs)
        if not isinstance(self._pool, httpcore.ConnectionPool):  # pragma: no cover
            raise TypeError("SafeTransport needs a direct connection pool")
        # httpx has no public hook for the network backend; this attribute is
        # the one place every connection of the pool is opened.
        self._pool._network_backend = _SafeBackend(policy, resolver)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme not in ("http", "https"):
            raise BlockedAddress(f"refusing scheme {request.url.scheme!r}", str(request.url))
        return super().handle_request(request)


def policy_of(client: httpx.Client) -> AddressPolicy:
    """The address policy of a client's transport chain; the strict default
    (public addresses only) when it has none. For connections that bypass
    httpx (websockets)."""
    transport: Any = getattr(client, "_transport", None)
    for _ in range(5):
        policy = getattr(transport, "policy", None)
        if isinstance(policy, AddressPolicy):
            return policy
        transport = getattr(transport, "inner", None)
    return AddressPolicy()


def user_agent(settings: CrawlerSettings) -> str:
    """The User-Agent: the configured product token plus the contact URL."""
    ua = settings.user_agent.strip() or "artwatch"
    if settings.contact_url and settings.contact_url not in ua:
        ua = f"{ua} (+{settings.contact_url})"
    return ua


@dataclass(frozen=True)
class Page:
    """A fetched text resource (API page, feed, HTML)."""

    url: str  # final URL after redirects
    status_code: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def not_modified(self) -> bool:
        return self.status_code == 304

    def text(self) -> str:
        charset = "utf-8"
        ctype = self.headers.get("content-type", "")
        if "charset=" in ctype:
            charset = ctype.split("charset=", 1)[1].split(";")[0].strip().strip('"') or "utf-8"
        try:
            return self.body.decode(charset, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())


def raise_for_status(resp: httpx.Response) -> None:
    """Map an error status to HTTPStatusError / ServerError / RateLimited."""
    final = str(resp.url)
    code = resp.status_code
    if code in (429, 503):
        raise RateLimited(
            f"{final}: HTTP {code}", final, code, _retry_after(resp.headers.get("retry-after"))
        )
    if code >= 500:
        raise ServerError(f"{final}: HTTP {code}", final, code)
    if code >= 400:
        raise HTTPStatusError(f"{final}: HTTP {code}", final, code)


def _read_capped(response: httpx.Response, max_bytes: int, url: str) -> bytes:
    """The body, refusing more than ``max_bytes``. Time is bounded by the
    exchange's :func:`deadline`, which every socket read obeys."""
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(f"{url}: Content-Length {declared} exceeds the {max_bytes}-byte cap", url)
    chunks: list[bytes] = []
    total = 0
    for chunk in response.iter_bytes():
        total += len(chunk)
        if total > max_bytes:
            raise TooLarge(f"{url}: body exceeds the {max_bytes}-byte cap", url)
        chunks.append(chunk)
    return b"".join(chunks)


def total_budget(client: httpx.Client) -> float | None:
    """Seconds a whole exchange (connect, headers, body, redirects) may take:
    three read timeouts (None if unlimited)."""
    read = client.timeout.read
    return 3 * read if read else None


def _exchange(
    client: httpx.Client,
    url: str,
    *,
    params: Params,
    headers: Mapping[str, str] | None,
    max_bytes: int,
) -> tuple[httpx.Response, bytes]:
    query: Any = params  # httpx accepts a mapping or a list of pairs
    budget = total_budget(client)
    with deadline(budget) as limit:
        try:
            with client.stream(
                "GET", url, params=query, headers=dict(headers or {}), follow_redirects=True
            ) as resp:
                final = str(resp.url)
                raise_for_status(resp)
                body = b"" if resp.status_code == 304 else _read_capped(resp, max_bytes, final)
                return resp, body
        except httpx.TooManyRedirects as exc:
            raise TooManyRedirects(f"{url}: too many redirects ({exc})", url) from None
        except httpx.TimeoutException as exc:
            if limit is not None and limit.expired():
                raise Timeout(
                    f"{url}: the exchange (connect, headers and body) took longer than "
                    f"{limit.budget:.1f}s in all",
                    url,
                ) from None
            raise Timeout(f"{url}: timed out ({type(exc).__name__})", url) from None
        except httpx.TransportError as exc:
            raise TransientFetchError(f"{url}: {type(exc).__name__}: {exc}", url) from None
        except httpx.HTTPError as exc:
            raise FetchError(f"{url}: {type(exc).__name__}: {exc}", url) from None


def fetch_page(
    client: httpx.Client,
    url: str,
    *,
    params: Params = None,
    headers: Mapping[str, str] | None = None,
    max_bytes: int = 5_000_000,
) -> Page:
    """GET a text resource with a size cap. 304 comes back as a Page with an
    empty body; other 4xx/5xx raise HTTPStatusError (RateLimited for 429/503)."""
    resp, body = _exchange(client, url, params=params, headers=headers, max_bytes=max_bytes)
    return Page(str(resp.url), resp.status_code, dict(resp.headers), body)


# -- images --------------------------------------------------------------

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"BM", 0, "image/bmp"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
)


def sniff_image_type(data: bytes) -> str | None:
    """The image MIME type from the leading bytes, or None if not an accepted image."""
    for magic, offset, mime in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "image/avif"
        if brand in (b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1"):
            return "image/heic"
    return None


@dataclass(frozen=True)
class FetchedImage:
    """Image bytes plus the evidence of their capture."""

    url: str
    final_url: str
    status_code: int
    headers: dict[str, str]
    content_type: str  # sniffed, not declared
    data: bytes
    fetched_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class SafeFetcher:
    """Downloads images through a client built by ``crawler.service.build_client``."""

    def __init__(self, client: httpx.Client, settings: CrawlerSettings) -> None:
        self.client = client
        self.settings = settings

    def fetch_image(self, url: str) -> FetchedImage:
        """GET ``url`` (size-capped, redirects re-validated) and sniff the type.

        Raises NotAnImage when the bytes are no supported image, whatever the
        Content-Type says."""
        resp, body = _exchange(
            self.client,
            url,
            params=None,
            headers={"Accept": "image/*"},
            max_bytes=self.settings.max_image_bytes,
        )
        final = str(resp.url)
        mime = sniff_image_type(body)
        if mime is None:
            declared = resp.headers.get("content-type", "?")
            raise NotAnImage(
                f"{final}: not an image (declared {declared}, first bytes {body[:8]!r})", final
            )
        return FetchedImage(url, final, resp.status_code, dict(resp.headers), mime, body)
