"""notify_classes: which problems Postfix reports to the postmaster by mail (postconf(5)).

    bounce    headers of bounced mail to bounce_notice_recipient (and a bounced
              notice to 2bounce_notice_recipient); smtpd transcripts of rejected mail
    2bounce   a bounced notice to 2bounce_notice_recipient
    delay     headers of delayed mail to delay_notice_recipient
    policy    smtpd transcript of a session a restriction rejected
    protocol  smtpd transcript of a session with a protocol error
    resource  smtpd transcript when mail was refused for a resource problem (queue file write)
    software  smtpd transcript when mail was refused for a software problem
    data      smtpd transcript when a critical data file was not writable

The default, as Postfix's, is `resource, software`. The notices themselves are
made by qmgr/bounce.py (bounce, 2bounce, delay) and smtpd/transcript.py (the rest).
"""

from __future__ import annotations

from mailferry.config.config import Config

CLASSES = frozenset({"bounce", "2bounce", "data", "delay", "policy", "protocol", "resource", "software"})
# The classes smtpd mails a session transcript for (smtpd.c: state->error_mask & state->notify_mask).
SMTPD_CLASSES = frozenset({"bounce", "data", "policy", "protocol", "resource", "software"})


def notify_classes(config: Config) -> frozenset[str]:
    """The classes main.cf asks for; an unknown word is left to `check` (config/values.py)."""
    return frozenset(word.lower() for word in config.list("notify_classes")) & CLASSES
