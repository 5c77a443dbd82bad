"""The one Jinja2 environment: autoescape, StrictUndefined, deployment overrides first.

A missing variable must fail the build rather than leave a blank in a sent email, so the
environment is strict; a deployment's own template folder is searched before ours.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape

__all__ = ["TEMPLATES_DIR", "make_environment"]

TEMPLATES_DIR = Path(__file__).resolve().parent.parent.parent / "templates"


def make_environment(override_dir: Path | None = None) -> Environment:
    """Build the environment once per process; pass it to whatever renders."""
    loaders = []
    if override_dir is not None:
        loaders.append(FileSystemLoader(str(override_dir)))
    loaders.append(FileSystemLoader(str(TEMPLATES_DIR)))
    env = Environment(
        loader=ChoiceLoader(loaders),
        autoescape=select_autoescape(["html", "htm", "xml", "j2"], default_for_string=True),
        undefined=StrictUndefined,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.install_null_translations(newstyle=True)  # type: ignore[attr-defined]
    return env
