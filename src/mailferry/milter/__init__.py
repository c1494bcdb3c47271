"""The Sendmail milter protocol client, as Postfix's (MILTER_README, src/milter/milter8.c).

    protocol.py   the wire format, sans-IO: packets, option negotiation, every SMFIC/SMFIR
    settings.py   smtpd_milters / non_smtpd_milters lists with `{ name, setting=value }`,
                  milter_* time-outs, milter_protocol, milter_default_action, the macro lists
    client.py     one milter connection (inet:host:port, unix:/path) and Postfix's verdicts
    session.py    a chain of milters for one session: the events, the content phase
    edits.py      the modifications, applied with Postfix's header index rules

Who calls it: smtpd (smtpd/milters.py) for smtpd_milters, cleanup (cleanup/milters.py) for the
content phase at end of data, on the same connections.

For mail that did not come over SMTP (non_smtpd_milters, from pickup):

    from mailferry.milter.settings import MilterSettings
    from mailferry.milter.session import MilterSession, non_smtp_macros, run_non_smtp_envelope
    settings = MilterSettings.from_config(config, "non_smtpd_milters")   # .milters empty: none
    session = MilterSession(settings, warn, non_smtp_macros(queue_id, sender, lambda: rcpt, myhostname))
    verdict = await run_non_smtp_envelope(session, sender, [r.address for r in message.recipients])
    # verdict None (or HOLD: set message.hold): go on; a REJECT/TEMPFAIL verdict: refuse the mail
    await cleanup.enqueue(message, queue_id, milters=session)   # content phase; ContentRefused
    await session.close()
"""
