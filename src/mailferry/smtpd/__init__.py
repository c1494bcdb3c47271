"""smtpd: the SMTP service: listeners, TLS, relay control, hand-off to cleanup."""
