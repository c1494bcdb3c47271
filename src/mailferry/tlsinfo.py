"""How a TLS session is described, in Postfix's words, on both sides.

smtpd stamps it into the Received header and the SMTP client logs it in
"TLS connection established"; both read this one module, so the words
match Postfix's on either side and neither service imports the other.
"""

from __future__ import annotations

import ssl


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str:
    """`TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)`, as Postfix logs and stamps it."""
    name, version, bits = ssl_object.cipher()
    return f"{ssl_object.version() or version} with cipher {name} ({bits}/{bits} bits)"
