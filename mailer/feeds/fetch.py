"""Fetch one feed: httpx over http(s) (with proxies, limits and conditional GET) or a local file.

This is the only module here that touches the network or the disk. Every failure becomes a
``FetchError`` naming the feed, so the poller can record it and go on with the others.

The operator chose the feed's host, not where it redirects: the configured host is trusted
wherever it resolves (it may be 127.0.0.1 or an intranet name), and every other host a redirect
names must be public, checked by the address guard (mailer/net.py) on every hop. So a blog that
redirects its feed to 169.254.169.254, to localhost or to another intranet host is refused, even
when the blog itself lives inside; an internal feed that redirects within its own host works.
"""

from __future__ import annotations

import asyncio
import enum
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from mailer.config import FeedSettings, FetchSettings
from mailer.errors import BlockedAddressError, FetchError
from mailer.net import AddressGuard, guarded_transport, open_guarded, tls_context

__all__ = ["FetchOutcome", "FetchResult", "Validators", "build_client", "fetch_feed", "redact"]


def redact(url: str) -> str:
    """The URL with any password replaced, for logs and screens (feeds behind basic auth)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class FetchOutcome(enum.StrEnum):
    FETCHED = "fetched"
    NOT_MODIFIED = "not-modified"


@dataclass(frozen=True)
class Validators:
    """What the last successful fetch told us, sent back for a conditional GET (RFC 9110 §13)."""

    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class FetchResult:
    outcome: FetchOutcome
    validators: Validators
    body: bytes = b""
    content_type: str | None = None
    final_url: str | None = None
    # The connection broke off mid-body: parse what came, but keep the old validators so that
    # the next poll fetches the whole feed again instead of getting a 304 for a broken copy.
    truncated: bool = False


def build_client(fetch: FetchSettings, proxy: str | None = None) -> httpx.AsyncClient:
    """One client per proxy, over the guarded transport; ``fetch_feed`` follows the redirects."""
    limits = httpx.Limits(max_connections=fetch.concurrency,
                          max_keepalive_connections=fetch.concurrency)
    return httpx.AsyncClient(
        transport=guarded_transport(_guard(fetch), proxy=proxy or fetch.proxy, verify=tls_context(),
                                    limits=limits),
        headers={
            "User-Agent": fetch.user_agent,
            "Accept": "application/atom+xml, application/rss+xml, application/rdf+xml;q=0.9, "
                      "application/xml;q=0.8, text/xml;q=0.8, */*;q=0.1",
            # httpx decodes these; brotli and zstd would need extra packages (and add little).
            "Accept-Encoding": "gzip, deflate",
        },
        timeout=httpx.Timeout(
            connect=fetch.connect_timeout, read=fetch.read_timeout,
            write=fetch.read_timeout, pool=fetch.connect_timeout + fetch.read_timeout,
        ),
        follow_redirects=False,
        trust_env=False,
    )


def _guard(fetch: FetchSettings) -> AddressGuard:
    return AddressGuard(fetch.unsafe_allow_networks_for_tests)


async def fetch_feed(feed: FeedSettings, validators: Validators, *, client: httpx.AsyncClient | None,
                     fetch: FetchSettings) -> FetchResult:
    """Fetch ``feed``; NOT_MODIFIED when the server (or the file's mtime) says nothing changed."""
    if feed.is_local:
        return await asyncio.to_thread(_read_local, feed.url, validators, fetch.max_body)
    assert client is not None, "an http client is needed for http(s) feeds"
    headers = {}
    if validators.etag:
        headers["If-None-Match"] = validators.etag
    if validators.last_modified:
        headers["If-Modified-Since"] = validators.last_modified
    try:
        async with asyncio.timeout(fetch.deadline):
            return await _get(feed, validators, headers, client, fetch)
    except FetchError:
        raise
    except BlockedAddressError as exc:
        raise FetchError(f"redirect refused: {exc}", feed=redact(feed.url)) from None
    except TimeoutError:
        raise FetchError(f"took longer than the {fetch.deadline:g}s deadline", feed=redact(feed.url)) from None
    except httpx.TooManyRedirects:
        raise FetchError(f"more than {fetch.max_redirects} redirects (a loop?)", feed=redact(feed.url)) from None
    except httpx.TimeoutException as exc:
        raise FetchError(f"timed out ({type(exc).__name__})", feed=redact(feed.url)) from None
    except httpx.RemoteProtocolError as exc:
        raise FetchError(f"connection broke off: {exc}", feed=redact(feed.url)) from None
    except (httpx.HTTPError, OSError) as exc:
        raise FetchError(f"{type(exc).__name__}: {exc}", feed=redact(feed.url)) from None


async def _get(feed: FeedSettings, validators: Validators, headers: dict[str, str],
               client: httpx.AsyncClient, fetch: FetchSettings) -> FetchResult:
    host = httpx.URL(feed.url).host
    async with open_guarded(client, feed.url, guard=_guard(fetch), max_redirects=fetch.max_redirects,
                            headers=headers, trusted=(host,)) as resp:
        if resp.status_code != 200:
            # Read the (empty or short) body, or httpcore drops the connection instead of
            # keeping it alive for the next feed on the same host.
            await resp.aread()
        if resp.status_code == 304:
            return FetchResult(FetchOutcome.NOT_MODIFIED, validators, final_url=str(resp.url))
        if resp.status_code != 200:
            raise FetchError(f"HTTP {resp.status_code} {resp.reason_phrase}".strip(),
                             feed=redact(feed.url), status=resp.status_code)
        declared = resp.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > fetch.max_body:
            raise FetchError(f"body of {declared} bytes is over the {fetch.max_body}-byte limit",
                             feed=redact(feed.url), status=200)
        chunks: list[bytes] = []
        size = 0
        # Count decoded bytes: a small gzip body can inflate to gigabytes.
        truncated = False
        try:
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > fetch.max_body:
                    raise FetchError(f"body is over the {fetch.max_body}-byte limit",
                                     feed=redact(feed.url), status=200)
                chunks.append(chunk)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.DecodingError):
            if not chunks:
                raise
            truncated = True
        return FetchResult(
            FetchOutcome.FETCHED,
            validators if truncated else
            Validators(resp.headers.get("etag"), resp.headers.get("last-modified")),
            body=b"".join(chunks), content_type=resp.headers.get("content-type"),
            final_url=str(resp.url), truncated=truncated,
        )


def _read_local(path: str, validators: Validators, max_body: int) -> FetchResult:
    """A local file's (mtime, size) plays the part of Last-Modified."""
    p = Path(path)
    try:
        st = p.stat()
        stamp = f"{st.st_mtime_ns}:{st.st_size}"
        if validators.last_modified == stamp:
            return FetchResult(FetchOutcome.NOT_MODIFIED, validators, final_url=path)
        if st.st_size > max_body:
            raise FetchError(f"file of {st.st_size} bytes is over the {max_body}-byte limit", feed=path)
        with p.open("rb") as fh:
            body = fh.read(max_body + 1)
    except FileNotFoundError:
        raise FetchError("no such file", feed=path) from None
    except OSError as exc:
        raise FetchError(f"cannot read: {os.strerror(exc.errno or 0) or exc}", feed=path) from None
    if len(body) > max_body:
        raise FetchError(f"file is over the {max_body}-byte limit", feed=path)
    return FetchResult(FetchOutcome.FETCHED, Validators(None, stamp), body=body, final_url=path)
