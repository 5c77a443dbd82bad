"""Fetch a post's images once per edition and embed them as inline ``cid:`` parts, within budget.

Blogger serves images from googleusercontent.com and bp.blogspot.com, both blocked in China, and
a remote image is also a tracking beacon: so the email carries its images itself. They are
fetched when the edition is built (I/O, here), then shrunk and recompressed (pure, Pillow) so that
all of a message's images fit ``ImageSettings.budget`` (default 1.5 MB, counted as base64 on the
wire). An image past the budget, or one that failed to download, is simply left out of the
returned mapping: the renderer shows its alt text and a link instead. Nothing here fails the
edition. Image URLs come from post content, which may be hostile: every fetch goes through the
address guard (mailer/net.py), and each image and the whole phase have a wall-clock deadline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import logging
import re
import warnings
from collections.abc import Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any, TypeVar

import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

from mailer.config import ImageSettings
from mailer.errors import BlockedAddressError
from mailer.models import InlineImage, Post
from mailer.net import AddressGuard, Resolver, guarded_transport, open_guarded

__all__ = [
    "MAX_DOWNLOAD",
    "FetchedImage",
    "encoded_size",
    "fetch_images",
    "fit_images",
    "image_client",
    "image_urls",
    "shrink",
]

log = logging.getLogger("newsletter.render.images")
T = TypeVar("T")

MAX_DOWNLOAD = 15 * 1024 * 1024  # a larger "image" is not worth the edition's time
MIN_SIDE = 240  # below this an image stops being useful; better the alt text and a link
_MAX_PIXELS = 60_000_000  # decompression-bomb guard, well above any photo a blog posts
_QUALITIES = (82, 70, 58)
_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
_EXT = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp"}


def encoded_size(n: int) -> int:
    """Octets ``n`` bytes take in a base64 body with 76-character CRLF lines (RFC 2045)."""
    chars = (n + 2) // 3 * 4
    return chars + (chars + 75) // 76 * 2


class _ImgSrc(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            src = dict(attrs).get("src") or ""
            if src.startswith("//"):
                src = "https:" + src
            if src.startswith(("http://", "https://")):
                self.urls.append(src.strip())


def image_urls(posts: Iterable[Post]) -> list[str]:
    """Every remote image the posts show, first use first, each once."""
    seen: dict[str, None] = {}
    for post in posts:
        parser = _ImgSrc()
        parser.feed(post.content_html)
        parser.close()
        for url in [*(i.url for i in post.images), *parser.urls]:
            seen.setdefault(url, None)
    return list(seen)


@dataclass(frozen=True)
class FetchedImage:
    """What the network gave us for one URL: the bytes, or None when the fetch failed."""

    url: str
    data: bytes | None


def _encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB").save(buf, "JPEG", quality=quality, optimize=True, progressive=True)
    else:
        img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _oriented(img: Image.Image) -> Image.Image:
    """Apply the EXIF rotation (phone photos), since we drop EXIF when recompressing."""
    return ImageOps.exif_transpose(img)


def shrink(data: bytes, *, max_dimension: int, target: int) -> tuple[bytes, str] | None:
    """Return ``(bytes, content type)`` at most ``target`` octets encoded, or None if impossible.

    A small image in a mail-safe format is kept byte for byte. Otherwise the image is scaled to
    ``max_dimension`` and recompressed (JPEG for photos; PNG kept for images with transparency
    or few colours, where JPEG would smear text), then stepped down in quality and size until
    it fits. An animated GIF becomes its first frame: QQ Mail and 163 often block animation.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            fmt = img.format or ""
            if img.width * img.height > _MAX_PIXELS:
                return None
            if fmt == "JPEG" and max(img.size) > max_dimension:
                # Decode at a reduced DCT scale (still >= max_dimension): several times faster
                # than decoding a camera-sized photo in full and then throwing most of it away.
                scale = max_dimension / max(img.size)
                img.draft("RGB", (int(img.width * scale) + 1, int(img.height * scale) + 1))
            img.load()
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
        SyntaxError,
    ):
        return None
    frames = getattr(img, "n_frames", 1)
    if (
        fmt in ("JPEG", "PNG", "GIF")
        and frames == 1
        and max(img.size) <= max_dimension
        and encoded_size(len(data)) <= target
    ):
        return data, _MIME[fmt]
    img = _oriented(img)
    has_alpha = img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info)
    lossless = has_alpha or (fmt in ("PNG", "GIF") and img.mode in ("P", "1", "L"))
    out_fmt = "PNG" if lossless else "JPEG"
    if img.mode not in ("RGB", "RGBA", "L"):
        img = img.convert("RGBA" if has_alpha else "RGB")
    side = min(max(img.size), max_dimension)
    while side >= MIN_SIDE:
        scaled = img.copy()
        scaled.thumbnail((side, side), Image.Resampling.LANCZOS)
        for quality in _QUALITIES if out_fmt == "JPEG" else (0,):
            encoded = _encode(scaled, out_fmt, quality)
            if encoded_size(len(encoded)) <= target:
                return encoded, _MIME[out_fmt]
        side = int(side * 0.75)
    return None


def _cid(index: int, data: bytes) -> str:
    # Deterministic, so a re-built edition yields the same message (golden files, dedup).
    return f"img{index}.{hashlib.sha256(data).hexdigest()[:16]}@newsletter"


def _filename(index: int, content_type: str) -> str:
    return f"image{index + 1}.{_EXT.get(content_type, 'bin')}"


def fit_images(fetched: Sequence[FetchedImage], settings: ImageSettings) -> dict[str, InlineImage]:
    """Pure: choose, shrink and name the images so that together they fit the budget.

    Each image gets a fair share of what is left (remaining budget / remaining images), so one
    huge photo at the top cannot starve the rest; what an image leaves unused passes on.
    """
    remaining = settings.budget
    out: dict[str, InlineImage] = {}
    usable = [f for f in fetched if f.data]
    for n, item in enumerate(usable):
        assert item.data is not None
        share = remaining // (len(usable) - n)
        result = shrink(item.data, max_dimension=settings.max_dimension, target=share)
        if result is None:
            continue
        data, content_type = result
        index = len(out)
        out[item.url] = InlineImage(
            cid=_cid(index, data),
            content_type=content_type,
            data=data,
            filename=_filename(index, content_type),
        )
        remaining -= encoded_size(len(data))
    return out


async def _download(client: httpx.AsyncClient, url: str, settings: ImageSettings,
                    guard: AddressGuard) -> FetchedImage:
    """One image within its own wall-clock deadline; any failure is one log line and None."""
    try:
        async with asyncio.timeout(settings.timeout):
            async with open_guarded(client, url, guard=guard, max_redirects=settings.max_redirects) as response:
                if response.status_code != 200:
                    log.warning("image %s: HTTP %s; shown as its alt text", url, response.status_code)
                    return FetchedImage(url, None)
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_DOWNLOAD:
                        log.warning("image %s: larger than %d bytes; skipped", url, MAX_DOWNLOAD)
                        return FetchedImage(url, None)
                    chunks.append(chunk)
                return FetchedImage(url, b"".join(chunks))
    except BlockedAddressError as exc:
        log.warning("image %s: refused, %s; shown as its alt text", url, exc)
    except TimeoutError:
        log.warning("image %s: not done within %gs; shown as its alt text", url, settings.timeout)
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
        log.warning("image %s: %s; shown as its alt text", url, type(exc).__name__)
    return FetchedImage(url, None)


_SAFE_URL = re.compile(r"^https?://[^\s]+$")
_DATA_IMAGE = re.compile(r"^data:image/(?:png|jpeg|gif|webp);base64,([a-z0-9+/=\s]+)$", re.I)


def _data_image(url: str) -> bytes | None:
    """Pure: the bytes of a raster ``data:`` image the sanitiser kept (RFC 2397), else None.

    It is embedded like a fetched one (recompressed, within the budget); one that is not
    shows its alt text only, never a link: readers' clients would open the data: URL.
    """
    m = _DATA_IMAGE.match(url)
    if m is None or len(m.group(1)) > MAX_DOWNLOAD * 4 // 3 + 4:
        return None
    try:
        return base64.b64decode(m.group(1), validate=False)
    except ValueError:
        return None


def image_client(settings: ImageSettings, *, resolver: Resolver | None = None,
                 workers: int = 4) -> httpx.AsyncClient:
    """The client for image fetches: guarded transport, [fetch]'s proxy and User-Agent unless
    [images] says otherwise, redirects followed hop by hop by ``open_guarded``."""
    guard = AddressGuard(settings.unsafe_allow_networks_for_tests)
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    return httpx.AsyncClient(
        transport=guarded_transport(guard, proxy=settings.proxy, limits=limits, resolver=resolver),
        follow_redirects=False,
        timeout=httpx.Timeout(settings.timeout, connect=min(settings.connect_timeout, settings.timeout)),
        headers={"User-Agent": settings.user_agent},
        trust_env=False,
    )


async def _fetch_all(urls: Sequence[str], settings: ImageSettings, client: httpx.AsyncClient | None,
                     workers: int) -> list[FetchedImage]:
    guard = AddressGuard(settings.unsafe_allow_networks_for_tests)
    gate = asyncio.Semaphore(max(1, workers))

    async def one(http: httpx.AsyncClient, url: str) -> FetchedImage:
        async with gate:
            return await _download(http, url, settings, guard)

    async with contextlib.AsyncExitStack() as stack:
        http: httpx.AsyncClient = client if client is not None else \
            await stack.enter_async_context(image_client(settings, workers=workers))
        tasks = [asyncio.create_task(one(http, u)) for u in urls]
        _done, late = await asyncio.wait(tasks, timeout=settings.deadline)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        if late:
            log.warning("images: the edition's %gs image deadline passed; %d image(s) shown as "
                        "their alt text", settings.deadline, len(late))
        return [t.result() if t in _done else FetchedImage(u, None) for t, u in zip(tasks, urls, strict=True)]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end from sync code, also when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def fetch_images(
    posts: Sequence[Post],
    settings: ImageSettings,
    *,
    client: httpx.AsyncClient | None = None,
    workers: int = 4,
) -> dict[str, InlineImage]:
    """Download the posts' images (I/O) and fit them to the budget: ``{url: InlineImage}``.

    Every URL comes from post content, so every fetch goes through the address guard
    (mailer/net.py). Each image has ``settings.timeout`` seconds, all of them together
    ``settings.deadline``; whatever is late or refused shows its alt text. ``client`` is the
    seam for tests (``image_client`` with a resolver); without one, it is built from settings.
    """
    if not settings.fetch or settings.budget <= 0:
        return {}
    every = image_urls(posts)
    inline = {u: _data_image(u) for u in every if u[:5].lower() == "data:"}
    urls = [u for u in every if _SAFE_URL.match(u)]
    fetched = {f.url: f for f in _run(_fetch_all(urls, settings, client, workers))} if urls else {}
    found = [fetched[u] if u in fetched else FetchedImage(u, inline.get(u)) for u in every
             if u in fetched or u in inline]
    return fit_images(found, settings)
