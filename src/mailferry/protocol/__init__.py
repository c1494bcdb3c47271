"""protocol: SMTP without I/O. Bytes and decisions in, events and bytes out.

- smtp_server: ServerConnection, the server-side state machine, and its
  ServerSettings and events.
- address: envelope paths (MAIL FROM / RCPT TO) parsed as Postfix accepts them.
- replies: the Reply record and every text the server sends on its own.

Nothing here imports the services, opens a socket or starts a task.
"""
