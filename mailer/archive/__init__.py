"""The web archive: every sent edition as a static site, published with rclone.

    site.py     pure: sent editions → the site's files (pages, Atom feeds, images), as bytes
    publish.py  I/O: write the files to the folder; ``rclone sync`` it to each target
    state.py    I/O: what the last publish did per target (``archive_targets``)

The pipeline (``mailer/pipeline/archive.py``) loads the editions and connects these; the CLI
(``newsletter archive build|publish``) and the daemon (after each send) call it.
"""
