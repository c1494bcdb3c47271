"""protocol: SMTP without I/O. Bytes and decisions in, events and bytes out.

- smtp_server: ServerConnection, the server-side state machine (verb and
  sequence tables, line framing, counters), and its ServerSettings.
- server_events: what ServerConnection reports: the events and markers.
- esmtp_parameters: MAIL FROM / RCPT TO parameters (SIZE, BODY, DSN, ...).
- message_readers: the DATA and BDAT readers.
- smtp_client: the client-side counterpart, for SMTP and LMTP delivery.
- address: envelope paths (MAIL FROM / RCPT TO) parsed as Postfix accepts them.
- replies: the Reply record and every text the server sends on its own.

Nothing here imports the services, opens a socket or starts a task.
"""
