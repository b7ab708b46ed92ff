"""Crawler errors.

Hierarchy::

    CrawlError                      anything the crawler refuses or cannot do
    ├── FetchError                  one HTTP exchange failed
    │   ├── BlockedAddress          the host resolves to an address we never contact
    │   ├── TooLarge                the body exceeded the size cap
    │   ├── TooManyRedirects        the redirect chain exceeded the limit
    │   ├── NotAnImage              the bytes are no image format we accept
    │   ├── RobotsDisallowed        robots.txt forbids the URL for our user agent
    │   ├── HTTPStatusError         the final response had a 4xx status
    │   └── TransientFetchError     may work later; also a ConnectionError, so
    │       │                       Celery's autoretry_for retries it
    │       ├── Timeout             connect or read took longer than allowed
    │       ├── ServerError         5xx (also an HTTPStatusError)
    │       ├── RateLimited         429/503 still returned after the allowed retries
    │       └── PolitenessUnavailable  the shared per-host limits (Redis) are unreachable
    ├── MalformedPage               a whole page/feed could not be parsed: retry later
    ├── MalformedItem               one item in a page could not be parsed: skip it
    └── UnknownSourceKind / InvalidSourceConfig   `sources add` validation

Every message names the URL or item it is about, so a log line alone explains
what went wrong.
"""

from __future__ import annotations

__all__ = [
    "BlockedAddress",
    "CrawlError",
    "FetchError",
    "HTTPStatusError",
    "InvalidSourceConfig",
    "MalformedItem",
    "MalformedPage",
    "NotAnImage",
    "PolitenessUnavailable",
    "RateLimited",
    "RobotsDisallowed",
    "ServerError",
    "Timeout",
    "TooLarge",
    "TooManyRedirects",
    "TransientFetchError",
    "UnknownSourceKind",
]


class CrawlError(Exception):
    """Base class of everything the crawler raises on purpose."""


class FetchError(CrawlError):
    """One HTTP exchange failed; ``url`` is the URL that was being fetched."""

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class BlockedAddress(FetchError):
    """The host resolved to a private, loopback, link-local, metadata or other
    non-public address that is not on the ``allow_internal`` list."""


class TooLarge(FetchError):
    """The response body exceeded the configured size cap."""


class TooManyRedirects(FetchError):
    """More redirects than ``max_redirects``."""


class NotAnImage(FetchError):
    """The downloaded bytes are not a supported image format (sniffed, not Content-Type)."""


class HTTPStatusError(FetchError):
    """The server answered with an error status."""

    def __init__(self, message: str, url: str = "", status_code: int = 0) -> None:
        super().__init__(message, url)
        self.status_code = status_code


class TransientFetchError(FetchError, ConnectionError):
    """A failure that may go away: connection refused or reset, timeout, 5xx, rate limit."""


class Timeout(TransientFetchError):
    """Connecting or reading took longer than the configured timeout."""


class ServerError(TransientFetchError, HTTPStatusError):
    """The server answered 5xx."""


class RateLimited(TransientFetchError, HTTPStatusError):
    """The host kept answering 429/503 after the allowed backoff retries."""

    def __init__(
        self, message: str, url: str = "", status_code: int = 429, retry_after: float | None = None
    ) -> None:
        super().__init__(message, url, status_code)
        self.retry_after = retry_after


class PolitenessUnavailable(TransientFetchError):
    """The store of the per-host limits shared between processes (Redis) cannot
    be reached, so no request was sent: crawling stops while it is down rather
    than guess how much of each host's rate this process may take."""


class RobotsDisallowed(FetchError):
    """robots.txt disallows this URL for our user agent."""


class MalformedPage(CrawlError):
    """A page, feed or event could not be parsed as a whole. The cursor is not
    advanced, so the next poll retries it."""


class MalformedItem(CrawlError):
    """One item could not be parsed. It is logged and skipped; the rest of the page continues."""


class UnknownSourceKind(CrawlError):
    """No source class is registered under that kind name."""


class InvalidSourceConfig(CrawlError):
    """A source's URL or parameters are unusable; the message says which and why."""
