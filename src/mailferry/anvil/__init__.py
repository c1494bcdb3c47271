"""Client limits (Postfix's anvil(8) and the smtpd_client_*_limit parameters).

    clients.py   the shared table: per-client session counts and event rates, across every
                 smtpd process, with per-process session counts the master zeroes for a dead worker
    limits.py    main.cf's limits for one smtpd service, and who is exempt from them

smtpd/service.py counts each session's events here and asks whether a limit is exceeded; the
replies and warnings come from refusals.py; the master shares the table before it forks, forgets
a dead worker's sessions, and logs anvil's statistics (master/anvil_status.py).
"""
