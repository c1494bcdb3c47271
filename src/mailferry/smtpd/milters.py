"""smtpd's side of the milters (smtpd_milters): which milters a service has, the macros an SMTP
session gives them (Postfix's smtpd_milter.c), and what their verdicts do to the session
(Postfix's check_milter_reply): a reject or tempfail is the reply, HOLD and DISCARD mark the
message and the transaction goes on, and every verdict is logged as Postfix logs it.

service.py makes one SessionMilters per session when the service has milters, and awaits its
steps after the restrictions of the same stage said yes. The content phase runs in cleanup
(cleanup/milters.py) on the same milter connections: `session` is handed to cleanup.enqueue.
"""

from __future__ import annotations

from mailferry import refusals
from mailferry.config.config import Config, ConfigValueError
from mailferry.maillog import Log
from mailferry.milter.client import DISCARD, HOLD, SHUTDOWN, Verdict
from mailferry.milter.session import MilterSession
from mailferry.milter.settings import MilterSettings
from mailferry.protocol.esmtp_parameters import MailParameters, RcptParameters
from mailferry.tables import Maps, TableError, open_maps
from mailferry.tables.result import FOUND, TEMPFAIL


class ServiceMilters:
    """The milters of one smtpd service: smtpd_milters, or per client what smtpd_milter_maps says
    (Postfix 3.2: a milter list, or DISABLE for none; not found: smtpd_milters)."""

    def __init__(self, config: Config, default: MilterSettings, maps: Maps | None):
        self._config = config
        self.default = default if default.milters else None
        self.maps = maps
        self._by_list: dict[str, MilterSettings | None] = {}

    async def for_client(self, address: str, warn) -> MilterSettings | None:
        if self.maps is None:
            return self.default
        try:
            found = await self.maps.lookup(address)
        except TableError as problem:
            warn(f"smtpd_milter_maps: {problem}; using smtpd_milters")
            return self.default
        if found.status == TEMPFAIL:
            warn(f"smtpd_milter_maps: lookup of {address} failed for now; using smtpd_milters")
            return self.default
        if found.status != FOUND:
            return self.default
        text = (found.value or "").strip()
        if text.upper() == "DISABLE":
            return None
        if text not in self._by_list:
            try:
                settings = MilterSettings.from_config(self._config, "smtpd_milter_maps", milter_list=text)
            except ConfigValueError as problem:
                warn(f"smtpd_milter_maps: {address}: {problem}; using smtpd_milters")
                return self.default
            self._by_list[text] = settings if settings.milters else None
        return self._by_list[text]


def service_milters(config: Config) -> ServiceMilters | None:
    """The milters of one smtpd service, as its view of main.cf (with -o overrides) names them;
    None without any, or with `receive_override_options = no_milters`."""
    if "no_milters" in config.list("receive_override_options"):
        return None
    maps_text = config.get("smtpd_milter_maps").strip()
    settings = ServiceMilters(config, MilterSettings.from_config(config, "smtpd_milters"),
                              open_maps(maps_text) if maps_text else None)
    if settings.default is None and settings.maps is None:
        return None
    return settings


class SessionMilters:
    """The milters of one SMTP session. `session` is smtpd's Session; read for the macros."""

    def __init__(self, settings: MilterSettings, session, log: Log, myhostname: str):
        self.session = session
        self.log = log
        self.myhostname = myhostname
        self.milters = MilterSession(settings, lambda text: log.warning("smtpd", text), self.macro)
        self.sender: str | None = None
        self.recipient: str | None = None
        self.hold_reason = ""
        self.discard = False
        self.queue_id = ""   # the message's, for `i` in the content phase (the session has moved on)

    # --- the macros (Postfix's smtpd_milter_eval)
    def macro(self, name: str) -> str | None:
        session, facts = self.session, self.session.facts
        if name == "j":
            return self.myhostname
        if name == "_":
            text = f"{facts.reverse_client_name} [{session.address}]"
            if facts.client_name.lower() != facts.reverse_client_name.lower():
                text += " (may be forged)"
            return text
        values = {
            "{client_addr}": session.address, "{client_port}": str(session.port),
            "{client_name}": facts.client_name, "{client_ptr}": facts.reverse_client_name,
            "{daemon_addr}": facts.server_address, "{daemon_port}": str(facts.server_port),
            "i": session.queue_id or self.queue_id or None,
        }
        if name in values:
            return values[name]
        if name == "{client_connections}":
            return None
        if facts.tls_protocol:
            tls = {"{tls_version}": facts.tls_protocol, "{cipher}": facts.tls_cipher,
                   "{cipher_bits}": str(facts.tls_cipher_bits)}
            if name in tls:
                return tls[name]
        if facts.sasl_username:
            sasl = {"{auth_type}": facts.sasl_method, "{auth_authen}": facts.sasl_username,
                    "{auth_author}": facts.sasl_sender or None}
            if name in sasl:
                return sasl[name]
        if name.startswith("{mail_") and self.sender is not None:
            return _address_macro(name[6:-1], self.sender)
        if name.startswith("{rcpt_") and self.recipient is not None:
            return _address_macro(name[6:-1], self.recipient)
        return None

    # --- the events; each returns the refusal the client hears, or None
    async def connect(self) -> refusals.Refusal | None:
        session = self.session
        verdict = await self.milters.connect(session.name, session.address, session.port)
        if verdict is None or verdict.kind in (HOLD, DISCARD):
            return None
        self._log_verdict(verdict, "CONNECT")
        code = 421 if verdict.kind == SHUTDOWN or verdict.reply.startswith("421") else int(verdict.reply[:3])
        if code == 421 or code >= 500:
            return refusals.milter_connect_refusal(self.myhostname, code)
        return None   # a 4xx: 220, and the milter answers the commands that follow with it

    async def helo(self, name: str) -> refusals.Refusal | None:
        """As Postfix (Sendmail compatibility): a reject at HELO is logged and persists, to answer
        MAIL and what follows; HELO itself gets 250, unless the milter said 421."""
        refusal = self._decide(await self.milters.helo(name), "HELO")
        if refusal is not None and refusal.reply.code != 421:
            return None
        return refusal

    async def mail(self, sender: str, params: MailParameters) -> refusals.Refusal | None:
        self.sender, self.recipient, self.hold_reason, self.discard, self.queue_id = sender, None, "", False, ""
        refusal = self._decide(await self.milters.mail([f"<{sender}>", *_mail_args(params)]), "MAIL")
        if refusal is not None:
            self.sender = None
        return refusal

    async def rcpt(self, recipient: str, params: RcptParameters) -> refusals.Refusal | None:
        if self.discard:
            return None
        self.recipient = recipient
        return self._decide(await self.milters.rcpt([f"<{recipient}>", *_rcpt_args(params)]), "RCPT")

    async def data(self) -> refusals.Refusal | None:
        if self.discard:
            return None
        return self._decide(await self.milters.data(), "DATA")

    async def end_transaction(self) -> None:
        """The transaction ended without the content phase (RSET, a refusal at end of data)."""
        if self.milters.in_transaction:
            await self.milters.abort()
        self.sender = self.recipient = None

    async def close(self) -> None:
        await self.milters.close()

    def _decide(self, verdict: Verdict | None, where: str) -> refusals.Refusal | None:
        if verdict is None:
            return None
        if verdict.kind == HOLD:
            if not self.hold_reason:
                self.hold_reason = verdict.reason or "milter triggers HOLD action"
                self._log(where, "milter-hold", self.hold_reason)
            return None
        if verdict.kind == DISCARD:
            if not self.discard:
                self.discard = True
                self._log(where, "milter-discard", "milter triggers DISCARD action")
            return None
        return refusals.milter_reply(self._log_verdict(verdict, where))

    def _log_verdict(self, verdict: Verdict, where: str) -> str:
        reply = "421 4.7.0 Server closing connection" if verdict.kind == SHUTDOWN else verdict.reply
        self._log(where, "milter-reject", reply)
        return reply

    def _log(self, where: str, action: str, text: str) -> None:
        """Postfix's `ID: milter-reject: RCPT from host[addr]: 550 5.7.1 text; from=<..> to=<..> proto=ESMTP helo=<..>`."""
        session = self.session
        tail = ""
        if self.sender is not None:
            tail += f" from=<{self.sender}>"
        if self.recipient is not None and where == "RCPT":
            tail += f" to=<{self.recipient}>"
        tail += f" proto={'ESMTP' if session.conn.esmtp else 'SMTP'}"
        if session.conn.helo_name:
            tail += f" helo=<{session.conn.helo_name}>"
        self.log.line("smtpd", f"{session.queue_id or 'NOQUEUE'}: {action}: {where} from {session.client}: "
                               f"{text};{tail}")


def _address_macro(part: str, address: str) -> str | None:
    """{mail_addr}/{rcpt_addr}, {mail_host}/{rcpt_host}, {mail_mailer}/{rcpt_mailer}. mailferry
    gives the address's domain as the host and `smtp` (or `local` for a bare local part) as the
    mailer, where Postfix asks trivial-rewrite for the route."""
    if part == "addr":
        return address
    domain = address.rpartition("@")[2] if "@" in address else ""
    if part == "host":
        return domain
    if part == "mailer":
        return "smtp" if domain else "local"
    return None


def _mail_args(params: MailParameters) -> list[str]:
    args = []
    if params.size is not None:
        args.append(f"SIZE={params.size}")
    if params.body:
        args.append(f"BODY={params.body}")
    if params.smtputf8:
        args.append("SMTPUTF8")
    if params.ret:
        args.append(f"RET={params.ret}")
    if params.envid:
        args.append(f"ENVID={params.envid}")
    if params.auth:
        args.append(f"AUTH={params.auth}")
    return args


def _rcpt_args(params: RcptParameters) -> list[str]:
    args = []
    if params.notify:
        args.append(f"NOTIFY={params.notify}")
    if params.orcpt:
        args.append(f"ORCPT={params.orcpt}")
    return args
