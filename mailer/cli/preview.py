"""``newsletter preview``: the next edition exactly as one sample reader would receive it.

Editors check a variant before it goes to the whole list: the HTML, the text part and the raw
``.eml`` are written from the same renderer and serialiser as ``send``, so what they see is what
readers get. Catalogs are strict here: a missing translation fails the preview, not the send.
"""

from __future__ import annotations

import re
import webbrowser
from dataclasses import dataclass
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import click

from mailer.app import App
from mailer.cli.base import cli, pass_app
from mailer.errors import InputError, RenderError
from mailer.models import Edition, EditionState, Post

__all__ = ["PreviewFiles", "next_edition", "preview", "write_preview"]

SAMPLE_ADDRESS = "reader@example.org"
SAMPLE_SUBSCRIBER_ID = 0


def next_edition(app: App, edition_id: int | None = None) -> tuple[Edition, str]:
    """The edition a preview shows, and a phrase saying where it came from.

    An explicit id wins; else the soonest scheduled edition; else the stored posts not yet in
    any edition (what ``send`` would send now); else, so that a fresh install can still see its
    templates, the most recent stored posts.
    """
    store = app.editions
    if edition_id is not None:
        return store.load(edition_id), f"edition {edition_id}"
    upcoming = store.upcoming(app.clock())
    if upcoming:
        return store.load(upcoming[0].id), f"scheduled edition {upcoming[0].id}"
    ids = store.unsent_post_ids()
    source = f"{len(ids)} post(s) not yet sent"
    posts: list[Post] = app.post_store.load(ids) if ids else []
    if not posts:
        posts = list(reversed(app.post_store.list_posts()))[:5]
        source = f"no unsent posts: the {len(posts)} most recent stored post(s)"
    if not posts:
        raise InputError("no posts are stored yet: run 'newsletter poll' first")
    per_post = app.config.newsletter.mode == "per-post"
    kind = "per-post" if per_post or len(posts) == 1 else "digest"
    return Edition(
        id=0, kind=kind, state=EditionState.DRAFT, posts=tuple(posts[:1]) if per_post else tuple(posts)
    ), source


@dataclass(frozen=True)
class PreviewFiles:
    html: Path
    text: Path
    eml: Path


def _sample_mirrors(app: App, slots: int) -> tuple[str, ...]:
    handed_out = [s.url for s in app.config.mirrors.active if s.kind != "onion"]
    return tuple(handed_out[:slots])


def _check_language(app: App, language: str) -> None:
    if language not in app.config.newsletter.choices:
        choices = ", ".join(app.config.newsletter.choices)
        raise InputError(f"--language {language!r} is not offered; choose one of {choices}")


def write_preview(
    app: App, edition: Edition, language: str, out: Path, *, date: datetime | None = None
) -> PreviewFiles:
    """Render, serialise and personalise for a sample reader; write .html, .txt and .eml."""
    from mailer.message import MessageTemplate, PersonalSlots
    from mailer.pipeline import header_settings
    from mailer.render.images import fetch_images
    from mailer.render.variant import RenderContext, render_variant

    _check_language(app, language)
    now = date or app.clock()
    images = fetch_images(edition.posts, app.config.images) if app.config.images.fetch else {}
    ctx = RenderContext.from_config(app.config, date=now, images=images, env=app.jinja, strict=True)
    variant = render_variant(edition, language, ctx)
    template = MessageTemplate.build(variant, edition_id=edition.id, headers=header_settings(app), date=now)
    raw = template.personalise(
        PersonalSlots(
            subscriber_id=SAMPLE_SUBSCRIBER_ID,
            address=SAMPLE_ADDRESS,
            unsubscribe_url=f"{app.config.newsletter.public_url}/u/PREVIEW-NOT-A-REAL-TOKEN",
            mirrors=_sample_mirrors(app, variant.mirror_slots),
        )
    )
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    html_part = msg.get_body(("html",))
    text_part = msg.get_body(("plain",))
    if html_part is None or text_part is None:
        raise RenderError("the serialised message lacks its text or HTML part")
    out.mkdir(parents=True, exist_ok=True)
    stem = language
    html = str(html_part.get_content())
    # A browser cannot resolve cid: references, so the preview's copy points at image files
    # written next to it; the .eml keeps the cid: parts exactly as readers receive them.
    for part in msg.walk():
        cid = (part["Content-ID"] or "").strip("<>")
        if part.get_content_maintype() != "image" or not cid:
            continue
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        name = f"{stem}-{re.sub(r'[^A-Za-z0-9._-]', '_', cid)}"
        (out / name).write_bytes(data)
        html = html.replace(f"cid:{cid}", name)
    files = PreviewFiles(out / f"{stem}.html", out / f"{stem}.txt", out / f"{stem}.eml")
    files.html.write_text(html, encoding="utf-8")
    files.text.write_text(str(text_part.get_content()), encoding="utf-8")
    files.eml.write_bytes(raw)
    return files


@cli.command()
@click.option(
    "--language",
    "language",
    required=True,
    metavar="LANG",
    help="A language choice: zh-Hans, zh-Hant, en, or a bilingual pair like zh-Hans+en.",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for LANG.html, LANG.txt and LANG.eml.",
)
@click.option("--edition", "edition_id", type=int, default=None, help="Preview this edition instead of the next one.")
@click.option("--open", "open_browser", is_flag=True, help="Open the HTML in the browser.")
@pass_app
def preview(app: App, language: str, out: Path, edition_id: int | None, open_browser: bool) -> None:
    """Write the next edition's HTML, text part and raw .eml as a sample reader gets them."""
    _check_language(app, language)
    edition, source = next_edition(app, edition_id)
    files = write_preview(app, edition, language, out)
    click.echo(f"preview of {source}, {language}:")
    for path in (files.html, files.text, files.eml):
        click.echo(f"  {path}")
    if open_browser:
        webbrowser.open(files.html.resolve().as_uri())
