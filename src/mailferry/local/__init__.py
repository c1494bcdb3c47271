"""Local submission: sendmail drops a file into maildrop, pickup turns it into a NewMessage.

maildrop.py   the maildrop file: its layout, an atomic writer, a strict reader
recipient_headers.py   sendmail -t: recipients from To/Cc/Bcc, Bcc removed
pickup.py     scanning maildrop, converting an entry, removing or quarantining it
"""
