"""SMTP AUTH, server side (Postfix's xsasl and smtpd_sasl_glue).

    mechanisms.py   PLAIN and LOGIN, sans-IO: responses in, credentials out
    passwords.py    {ARGON2ID}, {BLF-CRYPT}, {SHA512-CRYPT} as `doveadm pw` writes them
    dovecot.py      smtpd_sasl_type = dovecot: Dovecot's auth protocol over smtpd_sasl_path
    table.py        smtpd_sasl_type = table (mailferry's own): a lookup table of password hashes
    ldap_bind.py    smtpd_sasl_type = ldap (mailferry's own): find the DN, bind as it
    server.py       main.cf's smtpd_sasl_* for one service, and each session's AUTH exchange

smtpd/service.py asks server.AuthSession for each step and writes what it answers; the replies
come from refusals.py. AUTH commands are counted in anvil/clients.py (smtpd_client_auth_rate_limit).
"""
