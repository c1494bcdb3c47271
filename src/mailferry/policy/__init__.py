"""The restriction engine: Postfix's smtpd_check, for smtpd.

smtpd hands the engine what it knows of a session (facts.SessionFacts) at
each stage (client, HELO, MAIL, RCPT, DATA, end of data); the engine runs
the smtpd_*_restrictions lists as Postfix does and answers with a Refusal
(refusals.py) or None. Actions that change the message (HOLD, DISCARD,
REDIRECT, FILTER, PREPEND, BCC) are collected in the transaction's
MessageActions for cleanup; what the log must say is collected as notes.

Modules, one job each:
    facts.py           what restrictions read about the session
    state.py           one evaluation's state (warn_if_reject, defer_if_*), the
                       transaction's message actions, the log notes
    engine.py          the lists, their order, smtpd_delay_reject, classes
    restrictions.py    the built-in restrictions by name
    access.py          access(5) tables: lookup order and actions
    dns.py             DNS questions: names, mail hosts, DNSBL
    client_name.py     the client name from reverse DNS, verified forward
    policy_service.py  check_policy_service (SMTPD_POLICY_README)
    sender_login.py    smtpd_sender_login_maps and the mismatch family
    settings.py        all of the above's parameters, read once per configuration
"""
