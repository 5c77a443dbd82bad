"""Where the stages are connected: the one path every edition takes.

* :mod:`~mailer.pipeline.prepare`: render → serialise → personalise (send, workers, preview,
  test-send);
* :mod:`~mailer.pipeline.send`: enqueue and deliver an edition;
* :mod:`~mailer.pipeline.worker`: the scale-out sender (``newsletter worker``);
* :mod:`~mailer.pipeline.policy`: what is due and what to do with it (the daemon's job bodies,
  ``run --once``).

``scheduler.py`` and ``mailer/cli`` call these; these call the stages; imports point one way.
"""

from mailer.pipeline.policy import (
    Resumed,
    RunSummary,
    ensure_sample_subscribers,
    poll,
    resume_interrupted,
    run_once,
    unsubscribe_by_mail,
)
from mailer.pipeline.prepare import (
    PreparedEdition,
    Reader,
    header_settings,
    personalise,
    personaliser,
    prepare,
    prepare_edition,
    preview_messages,
)
from mailer.pipeline.send import (
    Held,
    SendSummary,
    SentCopy,
    cancel_edition,
    send_edition,
    send_new_posts,
    send_test,
    start_edition,
)

__all__ = [
    "Held",
    "PreparedEdition",
    "Reader",
    "Resumed",
    "RunSummary",
    "SendSummary",
    "SentCopy",
    "cancel_edition",
    "ensure_sample_subscribers",
    "header_settings",
    "personalise",
    "personaliser",
    "poll",
    "prepare",
    "prepare_edition",
    "preview_messages",
    "resume_interrupted",
    "run_once",
    "send_edition",
    "send_new_posts",
    "send_test",
    "start_edition",
    "unsubscribe_by_mail",
]
