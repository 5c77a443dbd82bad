"""``python -m mailer`` runs the ``newsletter`` CLI (tests use it to avoid PATH lookups)."""

from mailer.cli import main

main()
