"""Render one (edition, language) variant: Jinja2, then premailer once, then the text part.

Pure: the posts, the fetched images and the settings come in through ``RenderContext``; no
network, no database, no subscriber. Per-recipient values are left as ``@@SLOT_NAME@@``
placeholders (docs/architecture.md, "Slots") for ``MessageTemplate`` to fill in microseconds.
"""

from __future__ import annotations

import html as htmllib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote
from zoneinfo import ZoneInfo

from babel.dates import format_date
from jinja2 import Environment
from markupsafe import Markup

from mailer.config import Config, MirrorSettings, NewsletterSettings
from mailer.errors import RenderError
from mailer.feeds.sanitise import strip_tags
from mailer.mirrors.rewrite import mirror_alternatives
from mailer.models import Edition, InlineImage, Post, RenderedVariant
from mailer.render.catalog import Lazy, PerLanguage, Translator, catalog_for
from mailer.render.convert import CHINESE, Conversion, conversion_for, convert_html, convert_text
from mailer.render.env import make_environment
from mailer.render.safe import make_self_contained, remote_references
from mailer.render.text import Reference, flow, html_to_text
from mailer.slots import UNSUB_SLOT, defuse, mirror_slot
from subscribers.catalog import BABEL_LOCALES

__all__ = [
    "SINGLE_POST_KINDS",
    "IntroNote",
    "RenderContext",
    "WebEdition",
    "edition_subject",
    "inline_css",
    "intro_notes",
    "layout_for",
    "mirror_slot_count",
    "order_posts",
    "render_edition",
    "render_variant",
    "web_edition",
]

SINGLE_POST_KINDS = frozenset({"post", "per-post", "single"})


_STYLE_BLOCK = re.compile(r"<style\b[^>]*>.*?</style\s*>", re.I | re.S)
_IMPORT = re.compile(r"@import\b[^;]*;?", re.I)
_LINK_TAG = re.compile(r"<link\b[^>]*>", re.I)


def inline_css(document: str) -> str:
    """Inline the <style> rules into style attributes, so clients that drop <style> still get
    the layout; media queries stay in a <style> block for clients that honour them.

    premailer is told never to touch the network or the disk: no remote CSS, no link rewriting
    (that would also rewrite our ``@@SLOT_...@@`` hrefs)."""
    from premailer import Premailer

    # premailer's allow_network=False does not reach cssutils, which fetches an @import by
    # itself while parsing: drop @import rules (and <link> sheets) before premailer sees them.
    document = _STYLE_BLOCK.sub(lambda m: _IMPORT.sub("", m.group(0)), document)
    document = _LINK_TAG.sub("", document)
    try:
        return str(
            Premailer(
                document,
                base_url=None,
                allow_network=False,
                allow_loading_external_files=False,
                disable_link_rewrites=True,
                keep_style_tags=False,
                strip_important=False,
                remove_classes=False,
                disable_validation=True,
                cssutils_logging_level=50,
                align_floating_images=True,
            ).transform()
        )
    except Exception as exc:  # premailer raises many types; all mean "this variant is broken"
        raise RenderError(f"inlining CSS failed: {exc}") from exc


def mirror_slot_count(mirrors: MirrorSettings) -> int:
    """How many ``M0..`` slots a message carries: per_recipient, capped by the mirrors there are.

    Onion addresses are not partitioned (they cannot be blocked by DNS or SNI): they go into the
    footer for everyone, so they do not count here."""
    handed_out = [s for s in mirrors.active if s.kind not in ("onion", "archive")]
    return min(mirrors.per_recipient, len(handed_out))


@dataclass(frozen=True)
class RenderContext:
    """Everything ``render_variant`` needs besides the edition; built once per edition."""

    newsletter: NewsletterSettings
    env: Environment
    origins: tuple[str, ...] = ()
    mirror_slots: int = 0
    onions: tuple[str, ...] = ()
    images: Mapping[str, InlineImage] = field(default_factory=dict)
    date: datetime = field(default_factory=lambda: datetime.now(UTC))
    timezone: str = "UTC"
    strict: bool = False
    inline_css: Callable[[str], str] = inline_css
    text_width: int = 72
    # Per language choice, ``(host, url)`` of this edition's page on each healthy archive host
    # ("read this issue on …"); the pipeline builds it, the archive owns the page's path.
    archive_links: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        date: datetime,
        images: Mapping[str, InlineImage] | None = None,
        env: Environment | None = None,
        strict: bool = False,
        inliner: Callable[[str], str] = inline_css,
        onions: Sequence[str] | None = None,
    ) -> RenderContext:
        """``onions``: the footer's Tor addresses; pass ``MirrorRegistry.static_links()`` urls to
        leave out unhealthy ones (default: every active onion site in the config)."""
        if onions is None:
            onions = [s.url for s in config.mirrors.active if s.kind == "onion"]
        return cls(
            newsletter=config.newsletter,
            env=env or make_environment(config.newsletter.templates_dir),
            origins=config.mirrors.origins,
            mirror_slots=mirror_slot_count(config.mirrors),
            onions=tuple(onions),
            images=images or {},
            date=date,
            timezone=config.schedule.timezone,
            strict=strict,
            inline_css=inliner,
        )

    @property
    def override_dir(self) -> Path | None:
        return self.newsletter.templates_dir


def layout_for(edition: Edition) -> str:
    """``post`` for a single-post edition, ``digest`` otherwise."""
    return "post" if edition.kind in SINGLE_POST_KINDS else "digest"


def _halves(choice: str) -> tuple[str, ...]:
    return tuple(choice.split("+"))


def _rank(post: Post, halves: tuple[str, ...]) -> int:
    if post.language in halves:
        return halves.index(post.language)
    chinese_reader = any(h in CHINESE for h in halves)
    if post.language == "mixed" or (chinese_reader and post.language in CHINESE):
        return len(halves)  # readable after conversion, or half in the reader's language
    return len(halves) + 1


def order_posts(posts: Sequence[Post], choice: str) -> list[Post]:
    """The reader's own-language posts first (in edition order), then the rest, stably."""
    halves = _halves(choice)
    return sorted(posts, key=lambda p: _rank(p, halves))


_LANGUAGE_NAMES = {
    "en": "English",
    "zh-Hans": "Simplified Chinese",
    "zh-Hant": "Traditional Chinese",
    "mixed": "Chinese and English",
}


@dataclass(frozen=True)
class _ShownPost:
    """A post as one variant shows it: converted, cleaned, its links mirrored."""

    anchor: str
    title: str
    html: Markup
    text: str
    references: tuple[Reference, ...]
    link: str | None
    link_alternatives: tuple[str, ...]
    read_url: str | None  # the reader's first mirror when the post is on an origin, else link
    marker: str | None
    lang: str  # what the reader now sees: screen readers and CJK font choice follow it
    published: str | None
    images: tuple[InlineImage, ...]


def _no_crlf(value: str) -> str:
    """Header-bound text from feeds: CR/LF would let a post inject headers (RFC 5322 2.2)."""
    return " ".join(value.replace("\r", " ").replace("\n", " ").split())


class _Chrome:
    """The catalog plus the formatting helpers one variant uses."""

    def __init__(self, choice: str, ctx: RenderContext) -> None:
        self.choice = choice
        self.halves = _halves(choice)
        self.catalog: Translator = catalog_for(choice, override_dir=ctx.override_dir, strict=ctx.strict)
        self.tz = ZoneInfo(ctx.timezone)

    def _(self, message: str, **values: object) -> str:
        return self.catalog.translate(message, values)

    def date(self, when: datetime) -> str:
        local = when.astimezone(self.tz) if when.tzinfo else when
        parts = [format_date(local, format="long", locale=BABEL_LOCALES[h]) for h in self.halves]
        return parts[0] if len(set(parts)) == 1 else " / ".join(parts)

    def mirror_label(self, i: int) -> str:
        # A no-break space: "镜像 2" must never be cut between the word and its number.
        return self._("mirror %(n)s", n=i + 1).replace(" ", "\u00a0")

    def marker(self, post: Post, conversion: Conversion | None) -> str | None:
        if post.language in self.halves:
            return None
        name = Lazy(_LANGUAGE_NAMES.get(post.language, "English"))
        if conversion is not None and post.language in CHINESE:
            return self._("Converted from %(language)s", language=name)
        return self._("Written in %(language)s", language=name)


def _show_post(post: Post, index: int, chrome: _Chrome, ctx: RenderContext) -> _ShownPost:
    target = next((h for h in chrome.halves if h in CHINESE), None)
    # Every post, English ones too: the Han characters in "Liu Xiaobo Rally (释放刘晓波)" reach
    # a Traditional reader in Traditional (OpenCC leaves the Latin letters alone).
    config = conversion_for(post.language, target, taiwan_phrases=ctx.newsletter.taiwan_phrases,
                            mainland_phrases=ctx.newsletter.mainland_phrases,
                            phrases=ctx.newsletter.phrases) if target else None
    converted = config is not None and post.language in CHINESE
    title = convert_text(defuse(_no_crlf(post.title)), config) or chrome._("(untitled)")
    body = convert_html(defuse(post.content_html), config)

    def fallback(alt: str, url: str) -> str:
        # Not embedded (past the budget, or the fetch failed): the alt text and a link that
        # opens the image itself: on the reader's first mirror when it lives on an origin (the
        # origin is what is blocked), then the other mirrors and the original. Never the post.
        alt_text = convert_text(alt, config) or chrome._("image")
        label = htmllib.escape(chrome._("Image: %(alt)s", alt=alt_text))
        if not url:
            return f"[{label}]"
        view = htmllib.escape(chrome._("view image"))
        alts = mirror_alternatives(url, ctx.origins, ctx.mirror_slots)
        first = alts[0] if alts else url
        out = f'[{label} · <a href="{htmllib.escape(first, quote=True)}">{view}</a>'
        for i, alt_url in enumerate(alts[1:], start=1):
            out += f' · <a href="{htmllib.escape(alt_url, quote=True)}" style="white-space: nowrap;">'
            out += f"{htmllib.escape(chrome.mirror_label(i))}</a>"
        if alts:
            out += f' · <a href="{htmllib.escape(url, quote=True)}">'
            out += f'{htmllib.escape(chrome._("original address"))}</a>'
        return out + "]"

    body, images = make_self_contained(body, ctx.images, fallback)
    text_body = html_to_text(
        body,
        width=0,  # one line per paragraph: render_variant flows the whole part
        alternatives=lambda url: mirror_alternatives(url, ctx.origins, ctx.mirror_slots),
        image_label=lambda alt: f"[{chrome._('Image: %(alt)s', alt=alt or chrome._('image'))}]",
    )
    # No "(镜像 1 · 镜像 2)" after every link in the body: one block per post, in the template,
    # opens the post on the reader's mirrors (readers found the repeated labels clutter).
    link = defuse(post.link) if post.link else None
    alternatives = mirror_alternatives(link, ctx.origins, ctx.mirror_slots) if link else ()
    return _ShownPost(
        anchor=f"post-{index + 1}",
        title=title,
        html=Markup(body),  # noqa: S704  (cleaned by make_self_contained just above)
        text=text_body.text,
        references=tuple(text_body.references),
        link=link,
        link_alternatives=alternatives,
        read_url=alternatives[0] if alternatives else link,
        marker=chrome.marker(post, config),
        lang="" if post.language == "mixed" else (target or post.language) if converted else post.language,
        published=chrome.date(post.published) if post.published else None,
        images=images,
    )


@dataclass(frozen=True)
class IntroNote:
    """An editor's intro note as one variant shows it: its language and its paragraphs, each
    a tuple of lines (a line break inside a paragraph is kept: joining Chinese lines with a
    space would put a space between characters)."""

    lang: str
    paragraphs: tuple[tuple[str, ...], ...]


def intro_notes(notes: Mapping[str, str], choice: str) -> tuple[IntroNote, ...]:
    """Pure: the notes a reader of ``choice`` sees, in the order of its halves (a zh-Hans+en
    reader gets both). A note is plain text written by an editor: blank lines part paragraphs;
    it is escaped by the template and defused of slot syntax here, like feed text."""
    out = []
    for half in _halves(choice):
        text = defuse(notes.get(half, "")).replace("\r\n", "\n").replace("\r", "\n").strip()
        if not text:
            continue
        paragraphs = tuple(
            tuple(line.strip() for line in block.split("\n") if line.strip())
            for block in re.split(r"\n\s*\n", text))
        out.append(IntroNote(half, tuple(p for p in paragraphs if p)))
    return tuple(out)


def edition_subject(subjects: Mapping[str, str], choice: str, derived: str) -> str:
    """Pure: the editors' subject for ``choice`` (both halves' for a pair, joined by " / "),
    else ``derived``. One line: CR/LF would start a new header (RFC 5322 2.2)."""
    own = [_no_crlf(defuse(subjects[h])) for h in _halves(choice) if subjects.get(h, "").strip()]
    return " / ".join(dict.fromkeys(own)) if own else derived


# The word a reader mails to ``unsubscribe_mailto`` to leave (the inbound desk reads it), in
# each language's own quotation marks.
_LEAVE_WORDS = {"zh-Hans": "“退订”", "zh-Hant": "「退訂」", "en": "“unsubscribe”"}
_LEAVE_SUBJECTS = {"zh-Hans": "退订 unsubscribe", "zh-Hant": "退訂 unsubscribe", "en": "unsubscribe"}


def _leave_href(address: str | None, halves: tuple[str, ...]) -> str:
    if not address:
        return ""
    return f"mailto:{address}?subject={quote(_LEAVE_SUBJECTS.get(halves[0], 'unsubscribe'))}"


def _with_link(text: str, address: str, href: str) -> Markup:
    """``text`` (escaped) with ``address`` in it made a link to ``href`` (a mailto:)."""
    escaped = htmllib.escape(text)
    link = f'<a href="{htmllib.escape(href, quote=True)}">{htmllib.escape(address)}</a>'
    return Markup(escaped.replace(htmllib.escape(address), link))  # noqa: S704  (escaped above)


def _labelled(label: str, value: str) -> str:
    """"Label: value" in the text part. A full-width colon already holds its own space
    ("在线阅读：https://…"); a Latin one needs one."""
    return f"{label}{'' if label.endswith('：') else ' '}{value}"


_FONTS = {
    "zh-Hans": "'PingFang SC', 'Hiragino Sans GB', 'Microsoft YaHei', 'Noto Sans CJK SC', "
    "'Source Han Sans SC', 'WenQuanYi Micro Hei', sans-serif",
    "zh-Hant": "'PingFang TC', 'Microsoft JhengHei', 'Noto Sans CJK TC', 'Source Han Sans TC', sans-serif",
    "en": "Georgia, 'Times New Roman', serif",
}


def _html_lang(choice: str) -> str:
    return _halves(choice)[0]


def _content_language(choice: str) -> str:
    return ", ".join(_halves(choice))


def _shown(edition: Edition, language: str,
           ctx: RenderContext) -> tuple[_Chrome, str, list[_ShownPost], str, str, str]:
    """The chrome, layout, shown posts, name, date and subject of one variant: the mail's and
    the archive page's alike."""
    chrome = _Chrome(language, ctx)
    layout = layout_for(edition)
    posts = [_show_post(p, i, chrome, ctx) for i, p in enumerate(order_posts(edition.posts, language))]
    name = ctx.newsletter.name.get(chrome.halves[0]) or next(iter(ctx.newsletter.name.values()))
    date_text = chrome.date(ctx.date)
    subject = edition_subject(edition.subjects, language, _no_crlf(
        posts[0].title if layout == "post" else f"{name} · {date_text}"))
    return chrome, layout, posts, name, date_text, subject


def render_variant(edition: Edition, language: str, ctx: RenderContext) -> RenderedVariant:
    """Render ``edition`` for readers of ``language`` (a single language or "zh-Hans+en")."""
    if not edition.posts:
        raise RenderError(f"edition {edition.id} has no posts to render")
    chrome, layout, posts, name, date_text, subject = _shown(edition, language, ctx)
    mirrors = tuple(mirror_slot(i) for i in range(ctx.mirror_slots))
    values = {
        "_": chrome._,
        "lang": _html_lang(language),
        "languages": chrome.halves,
        # Constant CSS of ours, not feed text: marked safe so the quotes survive autoescape.
        "fonts": Markup(_FONTS[next((h for h in chrome.halves if h in CHINESE), "en")]),  # noqa: S704
        "name": name,
        "subject": subject,
        "date": date_text,
        "posts": posts,
        "intro": intro_notes(edition.notes, language),
        "layout": layout,
        "mirrors": mirrors,
        "onions": ctx.onions,
        "archive_links": ctx.archive_links.get(language, ()),
        "unsubscribe_url": UNSUB_SLOT,
        "public_url": ctx.newsletter.public_url,
        "mirror_label": chrome.mirror_label,
        # The text part is flowed as a whole (``flow``, below): ``wrap`` only indents.
        "wrap": lambda text, indent="", hang=None: indent + text,
        "list_address": ctx.newsletter.unsubscribe_mailto,
        "contact": ctx.newsletter.contact,
        "leave_word": PerLanguage(_LEAVE_WORDS, _LEAVE_WORDS["en"]),
        "leave_href": _leave_href(ctx.newsletter.unsubscribe_mailto, chrome.halves),
        "names": PerLanguage(ctx.newsletter.name, name),
        "with_link": _with_link,
        "labelled": _labelled,
        # One punctuation style: full-width brackets around a remark in a Chinese chrome.
        # After a title: "标题（英文文章）" but "Title (Written in English)".
        "aside": (lambda text: f"（{text}）") if chrome.halves[0] in CHINESE else (lambda text: f" ({text})"),
    }
    try:
        document = ctx.env.get_template(f"email/{layout}.html").render(values)
        text = ctx.env.get_template(f"email/{layout}.txt").render(values)
    except RenderError:
        raise
    except Exception as exc:  # jinja2's errors: a broken override or a missing variable
        raise RenderError(f"template email/{layout} failed for {language}: {exc}") from exc
    document = ctx.inline_css(document)
    _check_nothing_lost(document, posts, language)
    found = remote_references(document)
    if found:
        raise RenderError(f"rendered {language} HTML is not self-contained: {', '.join(found)}")
    images: dict[str, InlineImage] = {}
    for post in posts:
        for image in post.images:
            images.setdefault(image.cid, image)
    return RenderedVariant(
        language=language,
        subject=subject,
        html=document,
        text=flow(_normalise_text(text), ctx.text_width),
        images=tuple(images.values()),
        mirror_slots=ctx.mirror_slots,
        content_language=_content_language(language),
    )


def _check_nothing_lost(document: str, posts: Sequence[_ShownPost], language: str) -> None:
    """Every post's heading and the end of its text are still in the inlined HTML.

    lxml (under premailer) stops at libxml2's nesting limit of 256 and drops the rest without
    an error: a hostile post 300 levels deep lost its text, at 3,000 the posts after it went.
    The sanitiser caps nesting, so this is the net under it: a loss is an error, never a mail
    quietly missing posts."""
    text = strip_tags(document)
    for post in posts:
        tail = strip_tags(post.html)[-60:].strip()
        if f'id="{post.anchor}"' not in document or (tail and tail not in text):
            raise RenderError(
                f"rendering the {language} HTML lost the post {post.anchor} "
                f"({post.title[:60]!r}): its HTML is probably nested too deeply")


def _normalise_text(text: str) -> str:
    """At most one blank line in a row, no trailing spaces: templates need not be careful."""
    lines = [line.rstrip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"


def render_edition(edition: Edition, languages: Sequence[str], ctx: RenderContext) -> dict[str, RenderedVariant]:
    """Every variant of one edition, keyed by subscriber choice."""
    return {lang: render_variant(edition, lang, ctx) for lang in languages}


@dataclass(frozen=True)
class WebEdition:
    """One edition as a web page shows it (the archive): the mail's posts, catalog, dates and
    subject, with nothing per recipient: no slot, no mirror link (render it with
    ``mirror_slots=0``). Images are still ``cid:`` references; the page's writer maps them."""

    language: str
    lang: str
    languages: tuple[str, ...]
    name: str
    subject: str
    date: str
    layout: str
    posts: tuple[_ShownPost, ...]
    fonts: Markup
    translate: Callable[..., str]
    mirror_label: Callable[[int], str]
    images: tuple[InlineImage, ...]


def web_edition(edition: Edition, language: str, ctx: RenderContext) -> WebEdition:
    """``edition`` for readers of ``language`` on the web (pure). ``ctx.mirror_slots`` must be 0."""
    if not edition.posts:
        raise RenderError(f"edition {edition.id} has no posts to render")
    if ctx.mirror_slots:
        raise RenderError("a web page carries no per-recipient mirror slots")
    chrome, layout, posts, name, date_text, subject = _shown(edition, language, ctx)
    images: dict[str, InlineImage] = {}
    for post in posts:
        for image in post.images:
            images.setdefault(image.cid, image)
    return WebEdition(
        language=language,
        lang=_html_lang(language),
        languages=chrome.halves,
        name=name,
        subject=subject,
        date=date_text,
        layout=layout,
        posts=tuple(posts),
        # Constant CSS of ours, not feed text.
        fonts=Markup(_FONTS[next((h for h in chrome.halves if h in CHINESE), "en")]),  # noqa: S704
        translate=chrome._,
        mirror_label=chrome.mirror_label,
        images=tuple(images.values()),
    )
