"""``newsletter preview``: the next edition exactly as one sample reader would receive it.

Editors check a variant before it goes to the whole list: the HTML, the text part and the raw
``.eml`` are written from the same renderer and serialiser as ``send``, so what they see is what
readers get. Catalogs are strict here: a missing translation fails the preview, not the send.
"""

from __future__ import annotations

import mimetypes
import re
import webbrowser
from collections.abc import Sequence
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

__all__ = ["NOTHING_TO_PREVIEW", "PreviewFiles", "image_file_name", "next_edition", "preview",
           "write_preview", "write_previews"]



NOTHING_TO_PREVIEW = (
    "nothing to preview: no edition is scheduled and every stored post is already sent or in "
    "an edition; preview one with --edition ID (newsletter editions list), or poll for new posts")


def next_edition(app: App, edition_id: int | None = None) -> tuple[Edition, str] | None:
    """The edition a preview shows, and a phrase saying where it came from.

    An explicit id wins; else the soonest scheduled edition; else the stored posts not yet in
    any edition (what ``send`` would send now). None when there is none of these (the caller
    says :data:`NOTHING_TO_PREVIEW`), rather than quietly showing posts readers already have.
    """
    store = app.editions
    if edition_id is not None:
        return store.load(edition_id), f"edition {edition_id}"
    upcoming = store.upcoming(app.clock())
    if upcoming:
        return store.load(upcoming[0].id), f"scheduled edition {upcoming[0].id}"
    ids = store.unsent_post_ids()
    posts: list[Post] = app.post_store.load(ids) if ids else []
    if not posts:
        if app.post_store.list_posts():
            return None
        raise InputError("no posts are stored yet: run 'newsletter poll' first")
    source = f"{len(posts)} post(s) not yet sent"
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
    images: tuple[Path, ...] = ()


def _check_language(app: App, language: str) -> None:
    if language not in app.config.newsletter.choices:
        choices = ", ".join(app.config.newsletter.choices)
        raise InputError(f"--language {language!r} is not offered; choose one of {choices}")


def image_file_name(stem: str, cid: str, content_type: str, filename: str | None) -> str:
    """Pure: ``en-img0.3f2a….png``: the language, the part's Content-ID made safe for a file
    name, and an extension a file browser and an image viewer recognise."""
    suffix = Path(filename or "").suffix.lower()
    if not re.fullmatch(r"\.[a-z0-9]{1,5}", suffix):
        suffix = mimetypes.guess_extension(content_type) or ".bin"
    local = cid.split("@", 1)[0]
    return f"{stem}-{re.sub(r'[^A-Za-z0-9._-]', '_', local)}{suffix}"


def write_previews(app: App, edition: Edition, languages: Sequence[str], out: Path, *,
                   date: datetime | None = None) -> dict[str, PreviewFiles]:
    """Render, serialise and personalise for a sample reader; write .html, .txt and .eml per
    language, rendering the edition once (images are fetched once for all of them).

    The bytes come from ``mailer.pipeline.prepare``, as a send's do, with the sample reader's
    mirrors from the registry."""
    from mailer.pipeline.prepare import preview_messages

    for language in languages:
        _check_language(app, language)
    messages = preview_messages(app, edition, languages, date=date)
    out.mkdir(parents=True, exist_ok=True)
    return {language: _write(raw, language, out) for language, raw in messages.items()}


def write_preview(
    app: App, edition: Edition, language: str, out: Path, *, date: datetime | None = None
) -> PreviewFiles:
    """:func:`write_previews` for one language."""
    return write_previews(app, edition, [language], out, date=date)[language]


def _write(raw: bytes, stem: str, out: Path) -> PreviewFiles:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    html_part = msg.get_body(("html",))
    text_part = msg.get_body(("plain",))
    if html_part is None or text_part is None:
        raise RenderError("the serialised message lacks its text or HTML part")
    html = str(html_part.get_content())
    images = []
    # A browser cannot resolve cid: references, so the preview's copy points at image files
    # written next to it; the .eml keeps the cid: parts exactly as readers receive them.
    for part in msg.walk():
        cid = (part["Content-ID"] or "").strip("<>")
        if part.get_content_maintype() != "image" or not cid:
            continue
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        name = image_file_name(stem, cid, part.get_content_type(), part.get_filename())
        (out / name).write_bytes(data)
        images.append(out / name)
        html = html.replace(f"cid:{cid}", name)
    files = PreviewFiles(out / f"{stem}.html", out / f"{stem}.txt", out / f"{stem}.eml",
                         tuple(images))
    files.html.write_text(html, encoding="utf-8")
    files.text.write_text(str(text_part.get_content()), encoding="utf-8")
    files.eml.write_bytes(raw)
    return files


@cli.command()
@click.option(
    "--language",
    "--lang",
    "languages",
    multiple=True,
    metavar="LANG",
    help="A language choice: zh-Hans, zh-Hant, en, or a bilingual pair like zh-Hans+en. "
    "Repeatable; default: every language choice.",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for LANG.html, LANG.txt and LANG.eml (and the images) of each language.",
)
@click.option("--edition", "edition_id", type=int, default=None, help="Preview this edition instead of the next one.")
@click.option("--open", "open_browser", is_flag=True, help="Open the HTML in the browser (the first language).")
@pass_app
def preview(app: App, languages: Sequence[str], out: Path, edition_id: int | None,
            open_browser: bool) -> None:
    """Write the next edition's HTML, text part and raw .eml, in every language (or those
    given), as a sample reader gets them."""
    wanted = list(dict.fromkeys(languages)) or list(app.config.newsletter.choices)
    for language in wanted:
        _check_language(app, language)
    found = next_edition(app, edition_id)
    if found is None:
        click.echo(NOTHING_TO_PREVIEW)
        return
    edition, source = found
    written = write_previews(app, edition, wanted, out)
    click.echo(f"preview of {source}, {', '.join(wanted)}:")
    for language, files in written.items():
        click.echo(f"  {language}:")
        for path in (files.html, files.text, files.eml, *files.images):
            click.echo(f"    {path}")
    if open_browser:
        webbrowser.open(written[wanted[0]].html.resolve().as_uri())
