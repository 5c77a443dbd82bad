"""Rendering: an edition becomes one self-contained email per language variant.

    env.py      the one strict Jinja environment (deployment overrides first)
    catalog.py  the chrome's gettext catalogs (.po read at runtime with Babel)
    convert.py  OpenCC script conversion of post text, never of markup or URLs
    phrases.py  the region's words OpenCC misses (phrases.toml, 覆议 -> 复议), after OpenCC
    images.py   fetch, shrink and embed post images as cid: parts within a budget (I/O)
    safe.py     nothing remote, nothing that runs: the email-safe pass over post HTML
    text.py     the text/plain part: wrapped CJK and Latin, numbered link references
    variant.py  render_variant(edition, language, ctx) -> RenderedVariant (pure)

Per-recipient values are left as ``@@SLOT_NAME@@`` for ``mailer.message`` to fill.
"""
