"""delivery: the SMTP/LMTP client (TLS policy, SASL client), pipe and maildir delivery agents."""
