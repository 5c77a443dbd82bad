"""Fetch a post's images once per edition and embed them as inline ``cid:`` parts, within budget.

Blogger serves images from googleusercontent.com and bp.blogspot.com, both blocked in China, and
a remote image is also a tracking beacon: so the email carries its images itself. They are
fetched when the edition is built (I/O, here), then shrunk and recompressed (pure, Pillow) so that
all of a message's images fit ``ImageSettings.budget`` (default 1.5 MB, counted as base64 on the
wire). An image past the budget, or one that failed to download, is simply left out of the
returned mapping: the renderer shows its alt text and a link instead. Nothing here fails the
edition.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html.parser import HTMLParser

import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

from mailer.config import ImageSettings
from mailer.models import InlineImage, Post

__all__ = [
    "MAX_DOWNLOAD",
    "FetchedImage",
    "encoded_size",
    "fetch_images",
    "fit_images",
    "image_urls",
    "shrink",
]

log = logging.getLogger("newsletter.render.images")

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


def _download(client: httpx.Client, url: str) -> FetchedImage:
    try:
        with client.stream("GET", url) as response:
            if response.status_code != 200:
                log.warning("image %s: HTTP %s; shown as its alt text", url, response.status_code)
                return FetchedImage(url, None)
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_DOWNLOAD:
                    log.warning("image %s: larger than %d bytes; skipped", url, MAX_DOWNLOAD)
                    return FetchedImage(url, None)
                chunks.append(chunk)
            return FetchedImage(url, b"".join(chunks))
    except (httpx.HTTPError, OSError) as exc:
        log.warning("image %s: %s; shown as its alt text", url, type(exc).__name__)
        return FetchedImage(url, None)


_SAFE_URL = re.compile(r"^https?://[^\s]+$")


def fetch_images(
    posts: Sequence[Post],
    settings: ImageSettings,
    *,
    client: httpx.Client | None = None,
    workers: int = 4,
) -> dict[str, InlineImage]:
    """Download the posts' images (I/O) and fit them to the budget: ``{url: InlineImage}``.

    ``client`` is the seam: tests pass one aimed at a loopback server; without one, a client is
    built from ``settings.proxy`` and closed again.
    """
    if not settings.fetch or settings.budget <= 0:
        return {}
    urls = [u for u in image_urls(posts) if _SAFE_URL.match(u)]
    if not urls:
        return {}
    own = client is None
    http = client or httpx.Client(
        proxy=settings.proxy,
        follow_redirects=True,
        timeout=httpx.Timeout(20.0, connect=10.0),
        headers={"User-Agent": "newsletter-pipeline/0.1 (image fetch for an email edition)"},
    )
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(urls)))) as pool:
            fetched = list(pool.map(lambda u: _download(http, u), urls))
    finally:
        if own:
            http.close()
    return fit_images(fetched, settings)
