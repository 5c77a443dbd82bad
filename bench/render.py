"""Render speed: one edition of 5 posts with images, 100,000 subscribers, 3 languages, null transport.

Run: ``.venv/bin/python -m bench.render [SUBSCRIBERS]``. Measured in one run on one machine:

- build: fetch the posts' images from a loopback HTTP server, shrink them to the budget, render
  the 3 variants (Jinja2 + premailer + text part) and serialise each once (``MessageTemplate``);
- premailer calls, which must equal the number of variants (3), whatever the list size;
- send loop: for every subscriber, choose its mirrors (the real ``Partitioner``), make its
  unsubscribe URL, ``personalise`` and hand the bytes to a null transport (counts octets);
- per-recipient marginal cost of ``personalise`` alone, and of the whole loop body;
- the reference: the stdlib way, one ``EmailMessage`` per recipient (text, HTML, the same
  inline images) and ``as_bytes()``, timed on a sample of recipients in the same run;
- peak RSS of the process.

The machine is shared (several engineers, 2 cores), so other work can slow either side; the
ratio is steadier than the absolute times. Nothing here prints a subscriber address.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import io
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from ipaddress import ip_network
from pathlib import Path

from PIL import Image

from mailer.config import ImageSettings, load_config
from mailer.message import HeaderSettings, MessageTemplate, PersonalSlots
from mailer.mirrors.partition import Partitioner, period_index
from mailer.models import Edition, EditionState, InlineImage, Post, PostImage, RenderedVariant
from mailer.render.images import fetch_images
from mailer.render.variant import RenderContext, inline_css, render_variant
from tests.support.http import HTTPServer, Reply

__all__ = ["main"]

SUBSCRIBERS = 100_000
LANGUAGES = ("zh-Hans", "zh-Hant", "en")
REFERENCE_SAMPLE = 300
ORIGIN = "https://citizens-rights.blogspot.com"
# 6 active mirrors, 3 per recipient: 120 ordered tuples, within MessageTemplate's per-tuple cache.
MIRRORS = [f"https://m{i:02d}.example.net" for i in range(6)]
# A larger pool (12 mirrors: 1,320 ordered tuples) is measured separately on a sample.
MANY_MIRRORS = [f"https://m{i:02d}.example.net" for i in range(12)]
MANY_SAMPLE = 3_000
SECRET = b"bench-secret"
TOKEN_KEY = b"bench-token-key"
TARGET_US = 100.0

CONFIG = f"""
[newsletter]
from = "公民权利通讯 <digest@example.org>"
public_url = "https://news.example.org"
languages = ["zh-Hans", "zh-Hant", "en"]
[newsletter.name]
en = "Citizens' Rights Digest"
zh-Hans = "公民权利通讯"
zh-Hant = "公民權利通訊"
[storage]
database = "sqlite:///unused.db"
[delivery]
transport = "maildir"
[mirrors]
origins = ["{ORIGIN}"]
per_recipient = 3
{"".join(f'[[mirrors.sites]]{chr(10)}url = "{m}"{chr(10)}' for m in MIRRORS)}
[[mirrors.sites]]
url = "http://citizensrightsxyzabc2345abcdefghijklmnopqrstuvwxyzabcdef.onion"
kind = "onion"
"""

PARAGRAPH_ZH = (
    "一年前的今天，一位长期代理土地征收与信访案件的律师收到司法局的决定书，被吊销律师执业证。"
    "决定书只有一页，没有列出任何具体的违规事实。这一年里，他曾三次申请行政复议，均未获受理。"
)
PARAGRAPH_EN = (
    "The hearing of the twelve defendants was postponed for the third time this year; relatives "
    "who travelled from three provinces were turned away at the court gate without explanation."
)


def _photo(seed: int) -> bytes:
    base = Image.linear_gradient("L").resize((2400, 1600))
    grain = Image.effect_noise((2400, 1600), 30 + seed)
    img = Image.merge("RGB", (Image.blend(base, grain, 0.3), base, grain))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _posts(image_url: Callable[[int], str]) -> tuple[Post, ...]:
    out = []
    for i in range(5):
        lang = ("zh-Hans", "zh-Hant", "en", "zh-Hans", "en")[i]
        para = PARAGRAPH_EN if lang == "en" else PARAGRAPH_ZH
        links = "".join(
            f'<p>See <a href="{ORIGIN}/2026/{10 + j % 2}/post-{i}-{j}.html">related {j}</a> and '
            f'<a href="https://example.net/ref/{i}/{j}">source {j}</a>.</p>'
            for j in range(6)
        )
        body = (
            f"<p>{para}</p>" * 8 + links + f'<p><img src="{image_url(i)}" alt="photo {i}"></p>' + f"<p>{para}</p>" * 4
        )
        out.append(
            Post(
                guid=f"bench-{i}",
                title=f"Post {i} 标题 {i}",
                content_html=body,
                language=lang,
                link=f"{ORIGIN}/2026/11/post-{i}.html",
                published=datetime(2026, 11, 20 + i % 3, tzinfo=UTC),
                images=(PostImage(image_url(i), f"photo {i}"),),
            )
        )
    return tuple(out)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _token(subscriber_id: int) -> str:
    mac = hmac.new(TOKEN_KEY, subscriber_id.to_bytes(8, "big"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(subscriber_id.to_bytes(8, "big") + mac[:24]).decode().rstrip("=")


class NullTransport:
    """Accepts every message and keeps only counts: the send loop with no network in it."""

    def __init__(self) -> None:
        self.messages = 0
        self.octets = 0

    def send(self, envelope_from: str, recipient: str, data: bytes) -> None:
        self.messages += 1
        self.octets += len(data)


def _stdlib_message(
    variant: RenderedVariant, headers: HeaderSettings, slots: PersonalSlots, mirrors: tuple[str, ...]
) -> bytes:
    """The reference: what a straightforward sender builds per recipient with the stdlib."""
    values = {"UNSUB_URL": slots.unsubscribe_url}
    values.update({f"M{i}": m for i, m in enumerate(mirrors)})

    def fill(text: str) -> str:
        for name, value in values.items():
            text = text.replace(f"@@SLOT_{name}@@", value)
        return text

    msg = EmailMessage(policy=SMTP)
    msg["From"] = headers.from_addr
    msg["To"] = slots.address
    msg["Subject"] = variant.subject
    msg["Date"] = "Mon, 23 Nov 2026 00:00:00 +0000"
    msg["Message-ID"] = f"<e1.s{slots.subscriber_id}@example.org>"
    msg["List-Unsubscribe"] = f"<{slots.unsubscribe_url}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(fill(variant.text), cte="base64")
    msg.add_alternative(fill(variant.html), subtype="html", cte="base64")
    html_part = msg.get_body(("html",))
    assert isinstance(html_part, EmailMessage)
    for img in variant.images:
        maintype, subtype = img.content_type.split("/")
        html_part.add_related(img.data, maintype=maintype, subtype=subtype, cid=f"<{img.cid}>", filename=img.filename)
    return msg.as_bytes()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    subscribers = int(args[0]) if args else SUBSCRIBERS
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "newsletter.toml"
        cfg_path.write_text(CONFIG, encoding="utf-8")
        config = load_config(cfg_path)

    server = HTTPServer().start()
    try:
        for i in range(5):
            server.routes[f"/img/{i}.jpg"] = Reply(body=_photo(i), headers={"Content-Type": "image/jpeg"})
        posts = _posts(lambda i: server.url(f"/img/{i}.jpg"))
        edition = Edition(id=1, kind="digest", state=EditionState.APPROVED, posts=posts)
        calls = 0

        def counted(doc: str) -> str:
            nonlocal calls
            calls += 1
            return inline_css(doc)

        headers = HeaderSettings(
            from_addr=config.newsletter.from_addr, list_id="<news.example.org>", message_id_domain="example.org"
        )
        t0 = time.perf_counter()
        # The image server is on loopback, which the address guard refuses in a deployment.
        loopback = ImageSettings(unsafe_allow_networks_for_tests=(ip_network("127.0.0.0/8"),))
        images: dict[str, InlineImage] = fetch_images(posts, loopback)
        t_images = time.perf_counter() - t0
        ctx = RenderContext.from_config(config, date=datetime(2026, 11, 23, tzinfo=UTC), images=images, inliner=counted)
        t1 = time.perf_counter()
        variants = {lang: render_variant(edition, lang, ctx) for lang in LANGUAGES}
        t_render = time.perf_counter() - t1
        t2 = time.perf_counter()
        templates = {lang: MessageTemplate.build(v, edition_id=1, headers=headers) for lang, v in variants.items()}
        t_serialise = time.perf_counter() - t2
    finally:
        server.stop()
    t_build = time.perf_counter() - t0

    partitioner = Partitioner(SECRET, MIRRORS, ctx.mirror_slots)
    period = period_index(datetime(2026, 11, 23, tzinfo=UTC), config.mirrors.period)
    transport = NullTransport()
    base = config.newsletter.public_url

    # Per-recipient work, all of it: mirrors, token, personalise, hand-off.
    t3 = time.perf_counter()
    for sid in range(1, subscribers + 1):
        lang = LANGUAGES[sid % 3]
        data = templates[lang].personalise(
            PersonalSlots(
                subscriber_id=sid,
                address=f"r{sid}@example.com",
                unsubscribe_url=f"{base}/u/{_token(sid)}",
                mirrors=partitioner.choose(period, sid),
            )
        )
        transport.send("bounces@example.org", "", data)
    t_loop = time.perf_counter() - t3

    # personalise alone, on a sample with its inputs prepared beforehand.
    sample = [
        (
            templates[LANGUAGES[sid % 3]],
            PersonalSlots(
                subscriber_id=sid,
                address=f"r{sid}@example.com",
                unsubscribe_url=f"{base}/u/{_token(sid)}",
                mirrors=partitioner.choose(period, sid),
            ),
        )
        for sid in range(1, min(subscribers, 20_000) + 1)
    ]
    # CPU time (process_time) as well as wall time: on a shared machine, waiting for a core
    # inflates wall time but not the CPU the work itself took.
    t4, c4 = time.perf_counter(), time.process_time()
    for template, slots in sample:
        template.personalise(slots)
    per_personalise = (time.perf_counter() - t4) / len(sample) * 1e6
    cpu_personalise = (time.process_time() - c4) / len(sample) * 1e6

    # The reference, on a small sample (it is slow), same inputs.
    ref = sample[:REFERENCE_SAMPLE]
    t5, c5 = time.perf_counter(), time.process_time()
    for template, slots in ref:
        _stdlib_message(variants[template.language], headers, slots, slots.mirrors)
    per_reference = (time.perf_counter() - t5) / len(ref) * 1e6
    cpu_reference = (time.process_time() - c5) / len(ref) * 1e6

    # The same without the inline images: how much of the cost is copying the image bytes.
    bare = {
        lang: MessageTemplate.build(dataclasses.replace(v, images=()), edition_id=1, headers=headers)
        for lang, v in variants.items()
    }
    bare_sample = [(bare[t.language], s) for t, s in sample]
    for template, slots in bare_sample[:1000]:
        template.personalise(slots)  # warm the per-tuple caches as the main sample had them
    t7 = time.perf_counter()
    for template, slots in bare_sample:
        template.personalise(slots)
    per_bare = (time.perf_counter() - t7) / len(bare_sample) * 1e6
    bare_size = len(bare["zh-Hans"].personalise(sample[0][1]))

    # The same personalise with 12 mirrors in the pool: more distinct tuples than the cache holds.
    many = Partitioner(SECRET, MANY_MIRRORS, ctx.mirror_slots)
    fresh = {lang: MessageTemplate.build(v, edition_id=1, headers=headers) for lang, v in variants.items()}
    many_sample = [
        (
            fresh[LANGUAGES[sid % 3]],
            PersonalSlots(
                subscriber_id=sid,
                address=f"r{sid}@example.com",
                unsubscribe_url=f"{base}/u/{_token(sid)}",
                mirrors=many.choose(period, sid),
            ),
        )
        for sid in range(1, MANY_SAMPLE + 1)
    ]
    distinct = len({s.mirrors for _, s in many_sample})
    t6 = time.perf_counter()
    for template, slots in many_sample:
        template.personalise(slots)
    per_many = (time.perf_counter() - t6) / len(many_sample) * 1e6

    per_loop = t_loop / subscribers * 1e6
    variant_sizes = {lang: len(t.personalise(sample[0][1])) for lang, t in templates.items()}
    image_bytes = sum(len(i.data) for i in images.values())
    ok = calls == len(LANGUAGES)
    print(
        f"edition: 5 posts, {len(images)} inline images ({image_bytes / 1e3:.0f} kB), "
        f"{len(LANGUAGES)} variants, {subscribers:,} subscribers"
    )
    print(f"message size per variant (octets): {variant_sizes}")
    print(
        f"build: {t_build:.2f} s (images {t_images:.2f} s, render {t_render:.2f} s, "
        f"serialise {t_serialise * 1e3:.1f} ms)"
    )
    print(f"premailer calls: {calls} (variants: {len(LANGUAGES)}) -> {'OK' if ok else 'WRONG'}")
    print(
        f"send loop to null transport: {t_loop:.2f} s, {subscribers / t_loop:,.0f} msg/s, "
        f"{transport.octets / 1e9:.2f} GB"
    )
    print(
        f"per recipient: personalise {per_personalise:.1f} us (target <= {TARGET_US:.0f} us: "
        f"{'met' if per_personalise <= TARGET_US else 'MISSED'}); whole loop body {per_loop:.1f} us "
        "(mirrors + token + personalise + hand-off)"
    )
    print(
        f"  CPU time: personalise {cpu_personalise:.1f} us, reference {cpu_reference:.0f} us, "
        f"ratio {cpu_reference / cpu_personalise:.0f}x (target on CPU time: "
        f"{'met' if cpu_personalise <= TARGET_US else 'MISSED'})"
    )
    print(f"  without the inline images ({bare_size:,} octets a message): personalise {per_bare:.1f} us")
    print(
        f"  with 12 mirrors in the pool ({distinct} distinct tuples in {len(many_sample):,} "
        f"recipients, cold per-tuple cache): personalise {per_many:.1f} us"
    )
    print(f"reference (stdlib EmailMessage + as_bytes, {len(ref)} recipients): {per_reference:.0f} us per recipient")
    print(
        f"ratio reference / personalise: {per_reference / per_personalise:.0f}x; "
        f"reference / whole loop body: {per_reference / per_loop:.0f}x"
    )
    print(f"total time: {time.perf_counter() - t0:.1f} s; peak RSS: {_rss_mb():.0f} MB")
    print("note: shared 2-core machine; absolute times vary with load, ratios less so")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
