"""The admin's words, from the one gettext catalog (``msgctxt "admin"``), in zh-Hans, zh-Hant, en.

The English text is the msgid. Templates call ``t("Editions")``; Python code marks its messages
with ``N_`` so the catalog test (``tests/web/test_admin_catalog.py``) finds every msgid in
``templates/admin/`` and in this package and checks each language has it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from jinja2 import Environment

from subscribers.catalog import parse_po, po_path
from subscribers.languages import KNOWN_LANGUAGES

__all__ = ["ADMIN_CONTEXT", "N_", "SHOWN_VALUES", "AdminText", "load_admin_text"]

ADMIN_CONTEXT = "admin"


def N_(msgid: str) -> str:
    """Mark ``msgid`` for the catalog test; translated where it is shown."""
    return msgid


# Words the pages show from data (states, kinds, roles, outcomes), named here for the catalog.
SHOWN_VALUES = (
    N_("draft"), N_("scheduled"), N_("approved"), N_("held"), N_("sending"), N_("paused"),
    N_("sent"), N_("cancelled"), N_("missed"),
    N_("queued"), N_("deferred"), N_("failed"), N_("bounced"), N_("content_rejected"),
    N_("suppressed"),
    N_("pending"), N_("active"), N_("unsubscribed"), N_("complained"),
    N_("new"), N_("ok"), N_("failing"),
    N_("reserve"), N_("retired"),
    N_("digest"), N_("per-post"), N_("editor"), N_("operator"),
)


class AdminText:
    """``for_language(lang)`` is the ``t`` a page renders with; ``%(name)s`` values format in."""

    def __init__(self, messages: Mapping[str, Mapping[str, str]]) -> None:
        self._messages = messages

    def for_language(self, language: str) -> Callable[..., str]:
        table = self._messages.get(language, {})

        def t(msgid: str, **values: object) -> str:
            text = table.get(msgid) or msgid
            return text % values if values else text

        return t


def load_admin_text(env: Environment) -> AdminText:
    """Read the admin context of each catalog through the Jinja loader (a deployment's own
    ``locale/`` wins, as for the emails and the public pages)."""
    loader = env.loader
    assert loader is not None
    prefix = f"{ADMIN_CONTEXT}\x04"
    out: dict[str, dict[str, str]] = {}
    for lang in KNOWN_LANGUAGES:
        data = loader.get_source(env, po_path(lang))[0].encode("utf-8")
        out[lang] = {k[len(prefix):]: v for k, v in parse_po(data, lang).items()
                     if k.startswith(prefix) and isinstance(v, str)}
    return AdminText(out)
