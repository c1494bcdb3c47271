"""A real milter for the milter tests, written with Debian's python3-milter (pymilter, on
Sendmail's libmilter). Run it with the system Python, as a separate process:

    /usr/bin/python3 tests/peers/pymilter_peer.py inet:PORT@127.0.0.1 RECORD_DIR

What it does is chosen by each message (and client):
- a client from 127.0.0.5 is rejected at CONNECT, one from 127.0.0.6 gets SMFIS_TEMPFAIL there;
- a recipient whose local part is `reject-rcpt` is refused at RCPT (550 5.7.1 custom text),
  `tempfail-rcpt` gets SMFIS_TEMPFAIL, `discard-rcpt` makes the milter discard the message;
- the header `X-Milter-Test:` lists actions, comma-separated, taken at end of message:
  reject, reject-plain, tempfail, tempfail-custom, discard, accept, add-header, change-header,
  delete-header, insert-header, replace-body, change-from, add-rcpt, delete-rcpt, quarantine,
  sleep (no answer for 30 s: the MTA's time-out decides).
Each message it ends (eom or abort) is recorded as RECORD_DIR/<n>.json: the macros it saw at
each stage, the envelope, the headers and the body, so a test can say what the milter saw.
"""

import json
import os
import sys
import time

import Milter

MACROS = ["j", "_", "v", "i", "{daemon_name}", "{daemon_addr}", "{daemon_port}", "{client_addr}",
          "{client_name}", "{client_ptr}", "{client_port}", "{auth_type}", "{auth_authen}", "{auth_author}",
          "{mail_addr}", "{mail_host}", "{mail_mailer}", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}",
          "{tls_version}", "{cipher}", "{cipher_bits}"]

RECORD_DIR = sys.argv[2] if len(sys.argv) > 2 else "."
counter = [0]


class TestMilter(Milter.Base):
    def __init__(self):
        self.id = Milter.uniqueID()
        self.reset()
        self.connect_info = {}

    def reset(self):
        self.record = {"macros": {}, "rcpts": [], "headers": [], "body": b""}
        self.actions = []
        self.discard_rcpt = False

    def seen(self, stage):
        values = {}
        for name in MACROS:
            value = self.getsymval(name)
            if value is not None:
                values[name] = value
        self.record["macros"][stage] = values

    def connect(self, hostname, family, hostaddr):
        self.connect_info = {"hostname": hostname, "hostaddr": list(hostaddr) if hostaddr else None}
        self.seen("connect")
        self.connect_macros = self.record["macros"]["connect"]
        address = hostaddr[0] if hostaddr else ""
        if address == "127.0.0.5":
            return Milter.REJECT
        if address == "127.0.0.6":
            return Milter.TEMPFAIL
        return Milter.CONTINUE

    def hello(self, name):
        self.helo = name
        self.helo_macros = {}
        for macro in MACROS:
            value = self.getsymval(macro)
            if value is not None:
                self.helo_macros[macro] = value
        return Milter.CONTINUE

    def envfrom(self, sender, *params):
        self.reset()
        self.record["connect"] = self.connect_info
        self.record["macros"]["connect"] = self.connect_macros
        self.record["macros"]["helo"] = getattr(self, "helo_macros", {})
        self.record["helo"] = getattr(self, "helo", None)
        self.record["sender"] = sender
        self.record["sender_params"] = list(params)
        self.seen("mail")
        return Milter.CONTINUE

    def envrcpt(self, recipient, *params):
        self.record["rcpts"].append(recipient)
        self.seen("rcpt")
        local = recipient.strip("<>").split("@")[0]
        if local == "reject-rcpt":
            self.setreply("550", "5.7.1", "recipient refused by the test milter")
            return Milter.REJECT
        if local == "tempfail-rcpt":
            return Milter.TEMPFAIL
        if local == "discard-rcpt":
            self.discard_rcpt = True
        return Milter.CONTINUE

    def data(self):
        self.seen("data")
        return Milter.CONTINUE

    def header(self, name, value):
        self.record["headers"].append([name, value])
        if name.lower() == "x-milter-test":
            self.actions += [action.strip() for action in value.split(",") if action.strip()]
        return Milter.CONTINUE

    def eoh(self):
        self.seen("eoh")
        return Milter.CONTINUE

    def body(self, chunk):
        self.record["body"] += chunk
        return Milter.CONTINUE

    def eom(self):
        self.seen("eom")
        self.save()
        if self.discard_rcpt:
            return Milter.DISCARD
        verdict = Milter.ACCEPT
        for action in self.actions:
            if action == "reject":
                self.setreply("550", "5.7.1", "rejected by the test milter")
                verdict = Milter.REJECT
            elif action == "reject-plain":
                verdict = Milter.REJECT
            elif action == "tempfail":
                verdict = Milter.TEMPFAIL
            elif action == "tempfail-custom":
                self.setreply("451", "4.7.0", "try again later, says the test milter")
                verdict = Milter.TEMPFAIL
            elif action == "discard":
                verdict = Milter.DISCARD
            elif action == "accept":
                verdict = Milter.ACCEPT
            elif action == "add-header":
                self.addheader("X-Milter-Added", "yes")
            elif action == "change-header":
                self.chgheader("Subject", 1, "changed by the milter")
            elif action == "delete-header":
                self.chgheader("X-Remove-Me", 1, "")
            elif action == "insert-header":
                self.addheader("X-Milter-Inserted", "at the top", 0)
            elif action == "replace-body":
                self.replacebody(b"The milter replaced this body.\r\n")
            elif action == "change-from":
                self.chgfrom("<changed-sender@example.test>")
            elif action == "add-rcpt":
                self.addrcpt("<added-rcpt@elsewhere.example>")
            elif action == "delete-rcpt":
                self.delrcpt("<deleted-rcpt@elsewhere.example>")
            elif action == "quarantine":
                self.quarantine("quarantined by the test milter")
            elif action == "sleep":
                time.sleep(30)
        return verdict

    def abort(self):
        return Milter.CONTINUE

    def save(self):
        counter[0] += 1
        record = dict(self.record, body=self.record["body"].decode("utf-8", "replace"))
        path = os.path.join(RECORD_DIR, f"{os.getpid()}-{counter[0]:04d}.json")
        with open(path + ".tmp", "w") as out:
            json.dump(record, out)
        os.rename(path + ".tmp", path)


def main():
    Milter.factory = TestMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.ADDRCPT | Milter.ADDRCPT_PAR
                     | Milter.DELRCPT | Milter.CHGFROM | Milter.QUARANTINE)
    sys.stdout.flush()
    Milter.runmilter("mailferry-test-milter", sys.argv[1], 240)


if __name__ == "__main__":
    main()
