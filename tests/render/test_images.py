"""Images: fetched from a real loopback server, shrunk to the budget, embedded as cid: parts."""

from __future__ import annotations

import base64
import dataclasses
import io
import ipaddress
import re
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mailer.config import ImageSettings
from mailer.message import HeaderSettings, MessageTemplate, PersonalSlots
from mailer.models import Post, PostImage
from mailer.render.images import FetchedImage, encoded_size, fetch_images, fit_images, shrink
from mailer.render.safe import remote_references
from mailer.render.variant import RenderContext, render_variant
from tests.render.conftest import ORIGIN, single_edition
from tests.support.http import HTTPServer, Reply

# These tests serve images from loopback, which the address guard refuses by default: they
# name it in the test-only allowance, as a deployment never does.
LOOPBACK = ImageSettings(unsafe_allow_networks_for_tests=(ipaddress.ip_network("127.0.0.0/8"),))


def photo(width: int, height: int, quality: int = 95) -> bytes:
    """A photo-like JPEG (gradient plus grain): large on disk, like a camera upload."""
    base = Image.linear_gradient("L").resize((width, height))
    grain = Image.effect_noise((width, height), 40)
    img = Image.merge("RGB", (Image.blend(base, grain, 0.3), base, grain))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png(width: int, height: int, *, alpha: bool) -> bytes:
    img = Image.new("RGBA" if alpha else "RGB", (width, height), (200, 30, 30, 128) if alpha else (200, 30, 30))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def images_post(urls: list[str], link: str | None = f"{ORIGIN}/2026/11/photos.html") -> Post:
    body = "".join(f'<p><img src="{u}" alt="照片{i + 1}"></p>' for i, u in enumerate(urls))
    return Post(
        guid="photos",
        title="现场照片",
        content_html="<p>现场照片如下。</p>" + body,
        language="zh-Hans",
        link=link,
        images=tuple(PostImage(u, f"照片{i + 1}") for i, u in enumerate(urls)),
    )


HEADERS = HeaderSettings(
    from_addr="Digest <digest@example.org>", list_id="<news.example.org>", message_id_domain="example.org"
)


def personalise(variant_ctx: tuple[RenderContext, Post], language: str = "zh-Hans") -> EmailMessage:
    ctx, post = variant_ctx
    variant = render_variant(single_edition(post), language, ctx)
    template = MessageTemplate.build(variant, edition_id=8, headers=HEADERS)
    raw = template.personalise(
        PersonalSlots(
            subscriber_id=1,
            address="reader@example.com",
            unsubscribe_url="https://news.example.org/u/" + "A" * 43,
            mirrors=("https://d1a2b3c4.cloudfront.net", "https://mirror-two.netlify.app"),
        )
    )
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_twenty_large_images_stay_within_budget(http_server: HTTPServer, ctx: RenderContext) -> None:
    big = photo(2400, 1600)
    assert len(big) > 700_000
    urls = []
    for i in range(20):
        http_server.routes[f"/img/{i}.jpg"] = Reply(body=big, headers={"Content-Type": "image/jpeg"})
        urls.append(http_server.url(f"/img/{i}.jpg"))
    post = images_post(urls)
    settings = LOOPBACK
    images = fetch_images([post], settings)
    assert len(http_server.requests) == 20
    total = sum(encoded_size(len(i.data)) for i in images.values())
    assert total <= settings.budget
    assert len(images) >= 10, "a fair share each should let most photos in, smaller"
    for image in images.values():
        assert max(Image.open(io.BytesIO(image.data)).size) <= settings.max_dimension
    msg = personalise((dataclasses.replace(ctx, images=images), post))
    parts = [p for p in msg.walk() if p.get_content_maintype() == "image"]
    assert len(parts) == len(images)
    on_wire = sum(len(p.get_payload()) for p in parts)
    assert on_wire <= settings.budget
    html = msg.get_body(("html",))
    assert html is not None
    content = html.get_content()
    assert remote_references(content) == []
    for image in images.values():
        assert f'src="cid:{image.cid}"' in content
    # The ones left out are shown as alt text with links, never as a remote <img>.
    left_out = [u for u in urls if u not in images]
    for url in left_out:
        assert f'href="{url}"' in content
    assert msg.defects == []


def test_failed_fetch_degrades_to_alt_text_and_mirror_link(http_server: HTTPServer, ctx: RenderContext) -> None:
    http_server.routes["/ok.png"] = Reply(body=png(40, 30, alpha=False), headers={"Content-Type": "image/png"})
    http_server.routes["/gone.jpg"] = Reply(status=404, body=b"not here")
    http_server.routes["/blockpage.jpg"] = Reply(body=b"<html>blocked</html>", headers={"Content-Type": "text/html"})
    urls = [
        http_server.url("/ok.png"),
        http_server.url("/gone.jpg"),
        http_server.url("/blockpage.jpg"),
        "http://127.0.0.1:9/refused.jpg",
    ]
    post = images_post(urls)
    images = fetch_images([post], LOOPBACK)
    assert list(images) == [urls[0]]
    variant = render_variant(single_edition(post), "zh-Hans", dataclasses.replace(ctx, images=images))
    assert remote_references(variant.html) == []
    for i in (2, 3, 4):
        assert f"图片：照片{i}" in variant.html
        assert f"图片：照片{i}" in variant.text
    # The image host is not an origin: the link opens the image itself, never the post.
    body = variant.html.split('<div class="body"', 1)[1].split("</div>", 1)[0]
    assert re.search(rf'href="{re.escape(urls[1])}"[^>]*>查看图片</a>]', body)
    assert "/2026/11/photos.html" not in body
    assert len(variant.images) == 1


def test_small_image_is_kept_byte_for_byte() -> None:
    data = png(64, 48, alpha=False)
    result = shrink(data, max_dimension=1200, target=100_000)
    assert result == (data, "image/png")


def test_transparent_png_stays_png_when_shrunk() -> None:
    data = png(2000, 1000, alpha=True)
    result = shrink(data, max_dimension=800, target=1_000_000)
    assert result is not None
    out, ctype = result
    assert ctype == "image/png"
    assert Image.open(io.BytesIO(out)).size == (800, 400)


def test_animated_gif_becomes_one_frame() -> None:
    frames = [Image.new("P", (300, 200), i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    result = shrink(buf.getvalue(), max_dimension=1200, target=100_000)
    assert result is not None
    assert getattr(Image.open(io.BytesIO(result[0])), "n_frames", 1) == 1


def test_not_an_image_is_left_out() -> None:
    assert shrink(b"<html>captive portal</html>", max_dimension=1200, target=10**6) is None
    fetched = [FetchedImage("https://x/a.jpg", b"GIF89a broken"), FetchedImage("https://x/b.jpg", None)]
    assert fit_images(fetched, ImageSettings()) == {}


def test_tiny_budget_embeds_nothing_and_fetch_off_fetches_nothing(http_server: HTTPServer) -> None:
    http_server.routes["/a.jpg"] = Reply(body=photo(1600, 1200))
    post = images_post([http_server.url("/a.jpg")])
    assert fetch_images([post], dataclasses.replace(LOOPBACK, budget=2_000)) == {}
    assert fetch_images([post], dataclasses.replace(LOOPBACK, fetch=False)) == {}
    assert len(http_server.requests) == 1


def test_cids_are_deterministic() -> None:
    fetched = [FetchedImage("https://x/a.png", png(10, 10, alpha=False))]
    assert fit_images(fetched, ImageSettings()) == fit_images(fetched, ImageSettings())


@settings(deadline=None)
@given(st.binary(max_size=3000))
def test_encoded_size_matches_mime_base64(data: bytes) -> None:
    b64 = base64.b64encode(data)
    lines = [b64[i : i + 76] for i in range(0, len(b64), 76)]
    assert encoded_size(len(data)) == sum(len(line) + 2 for line in lines)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 57, 58, 10_000])
def test_encoded_size_examples(n: int) -> None:
    assert encoded_size(n) >= n * 4 // 3


def test_data_images_are_embedded_and_never_become_links(ctx: RenderContext) -> None:
    """A raster data: image is embedded like a fetched one; one that is not shows its alt only."""
    good = "data:image/png;base64," + base64.b64encode(png(40, 30, alpha=False)).decode()
    broken = "data:image/png;base64," + base64.b64encode(b"not a png at all").decode()
    post = images_post([good, broken])
    images = fetch_images([post], LOOPBACK)
    assert list(images) == [good]
    variant = render_variant(single_edition(post), "zh-Hans", dataclasses.replace(ctx, images=images))
    assert remote_references(variant.html) == []
    assert "data:" not in variant.html
    assert "图片：照片2" in variant.html
    assert len(variant.images) == 1
