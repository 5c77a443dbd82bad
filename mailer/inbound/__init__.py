"""Mail that comes back: bounces (DSN and providers' own shapes), complaints (ARF) and
readers' commands by mail.

* :mod:`~mailer.inbound.classify`: what a message is (pure);
* :mod:`~mailer.inbound.commands`: readers' commands in English and Chinese (pure);
* :mod:`~mailer.inbound.addresses`: our ``+tag`` addresses, VERP and Reply-To (pure);
* :mod:`~mailer.inbound.score`: the decaying soft-bounce score (pure);
* :mod:`~mailer.inbound.replies`: our answers to readers (pure);
* :mod:`~mailer.inbound.maildir` and :mod:`~mailer.inbound.lmtp`: the intake, at the edge.

What each verdict causes is ``mailer.pipeline.inbound``'s business: the stages here decide,
the pipeline acts through the subscriber lifecycle, the outbox and the signup desk.
"""
