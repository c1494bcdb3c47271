"""Private OpenLDAP slapd instances holding the seed's directory (issue 9's "Directory routing").

Each instance is one `slapd -d 0 -f slapd.conf -h ldap://127.0.0.1:PORT/` process (foreground, so
the fixture owns its pid) with an old-style slapd.conf, its own mdb database, pid and args files
under a fresh directory; nothing from /etc/ldap/slapd.d is read. The data is loaded with `slapadd`
before the first start, with the schema checked (no `slapadd -s`).

Schema: Debian's core, cosine and inetorgperson, plus MAILRECIPIENT_SCHEMA below. Choices:
- `mailRecipient` is declared `SUP top AUXILIARY`, as 389-ds declares it. The seed prints it with
  no SUP and no kind, which makes it STRUCTURAL, and then the seed's own entry (givenName, sn,
  no other structural class) does not fit. An auxiliary class needs a structural one beside it:
  the John Smith entry therefore also has `objectClass: inetOrgPerson`, and so a `cn` (person's
  MUST). docs/tables.md says the same for administrators.
- The mail attributes keep their Netscape OIDs (mailRoutingAddress .3.1.47, mailHost .3.1.18,
  mailAlternateAddress .3.1.13). Debian's misc.schema is NOT loaded: its mailLocalAddress reuses
  .3.1.13. `mail` itself comes from cosine (rfc822Mailbox, caseIgnoreIA5Match).
- Of the seed's MAY list only the attributes mailferry's tests use are defined; the rest
  (mailAutoReplyText, mailQuota...) would need OIDs we cannot check here.

Controls for failover tests: stop()/start() (same port, same data), freeze()/thaw() (SIGSTOP and
SIGCONT: the kernel still accepts connections, nobody answers: the "hung server" case).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.peers import PeerError, free_port, require_tool, stop_process, tail_file, wait_for_port

SUFFIX = "dc=example,dc=com"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "secret"
HOST = "127.0.0.1"

MAILRECIPIENT_SCHEMA = """\
# mailRecipient as 389-ds declares it (Netscape Messaging Server 4.x), AUXILIARY: see tests/peers/slapd.py.
attributetype ( 2.16.840.1.113730.3.1.13
	NAME 'mailAlternateAddress'
	DESC 'Netscape Messaging Server 4.x defined attribute'
	EQUALITY caseIgnoreIA5Match
	SUBSTR caseIgnoreIA5SubstringsMatch
	SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{256} )

attributetype ( 2.16.840.1.113730.3.1.18
	NAME 'mailHost'
	DESC 'Netscape Messaging Server 4.x defined attribute'
	EQUALITY caseIgnoreIA5Match
	SUBSTR caseIgnoreIA5SubstringsMatch
	SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{256} )

attributetype ( 2.16.840.1.113730.3.1.47
	NAME 'mailRoutingAddress'
	DESC 'Netscape Messaging Server 4.x defined attribute'
	EQUALITY caseIgnoreIA5Match
	SUBSTR caseIgnoreIA5SubstringsMatch
	SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{256} )

objectclass ( 2.16.840.1.113730.3.2.3
	NAME 'mailRecipient'
	SUP top AUXILIARY
	MAY ( cn $ mail $ mailAlternateAddress $ mailHost $ mailRoutingAddress $ uid $ userPassword ) )
"""

# The seed's five addresses for John Smith; every one routes to SEED_ROUTING_ADDRESS.
SEED_ADDRESSES = ("sample.user@example.com", "sample_user@example.com", "sampleuser@example.com",
                  "sample@example.com", "john.smith@example.com")
SEED_ROUTING_ADDRESS = "john.smith@mail1.internal"
# An entry whose mail literally contains "*": it must match itself, and only itself.
STAR_ADDRESS = "star*user@example.com"
STAR_ROUTING_ADDRESS = "star.user@mail2.internal"
# One address on two entries: under size_limit = 1 a lookup of it is a temporary failure.
SHARED_ADDRESS = "shared@example.com"
SHARED_ROUTING_ADDRESSES = ("first.owner@mail1.internal", "second.owner@mail2.internal")
# A group whose members are DNs: special_result_attribute = member follows them.
GROUP_ADDRESS = "staff@example.com"
GROUP_MEMBERS = ("uid=john.smith,ou=People,dc=example,dc=com", "uid=star.user,ou=People,dc=example,dc=com")

DIRECTORY_LDIF = f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=People,{SUFFIX}
objectClass: organizationalUnit
ou: People

# The seed's entry as printed, plus inetOrgPerson (structural) and the cn that class requires.
dn: uid=john.smith,ou=People,{SUFFIX}
givenName: John
sn: Smith
cn: John Smith
{"".join(f"mail: {address}{chr(10)}" for address in SEED_ADDRESSES)}\
objectClass: top
objectClass: mailRecipient
objectClass: inetOrgPerson
uid: john.smith
mailRoutingAddress: {SEED_ROUTING_ADDRESS}

dn: uid=star.user,ou=People,{SUFFIX}
objectClass: top
objectClass: account
objectClass: mailRecipient
uid: star.user
mail: {STAR_ADDRESS}
mailRoutingAddress: {STAR_ROUTING_ADDRESS}

dn: uid=first.owner,ou=People,{SUFFIX}
objectClass: top
objectClass: account
objectClass: mailRecipient
uid: first.owner
mail: {SHARED_ADDRESS}
mailRoutingAddress: {SHARED_ROUTING_ADDRESSES[0]}

dn: uid=second.owner,ou=People,{SUFFIX}
objectClass: top
objectClass: account
objectClass: mailRecipient
uid: second.owner
mail: {SHARED_ADDRESS}
mailRoutingAddress: {SHARED_ROUTING_ADDRESSES[1]}

dn: ou=Groups,{SUFFIX}
objectClass: organizationalUnit
ou: Groups

dn: cn=staff,ou=Groups,{SUFFIX}
objectClass: top
objectClass: groupOfNames
objectClass: mailRecipient
cn: staff
mail: {GROUP_ADDRESS}
{"".join(f"member: {member}{chr(10)}" for member in GROUP_MEMBERS)}\
"""


class Slapd:
    """One private slapd on 127.0.0.1:port serving SUFFIX from its own mdb database."""

    def __init__(self, directory: Path, port: int = 0, ldif: str = DIRECTORY_LDIF):
        self.directory = Path(directory)
        self.port = port or free_port(HOST)
        self.ldif = ldif
        self.config_path = self.directory / "slapd.conf"
        self.log_path = self.directory / "slapd.log"
        self.process: subprocess.Popen | None = None
        self.frozen = False
        self._loaded = False

    @property
    def url(self) -> str:
        return f"ldap://{HOST}:{self.port}/"

    def config(self) -> str:
        schema = self.directory / "mailrecipient.schema"
        schema.write_text(MAILRECIPIENT_SCHEMA)
        includes = "".join(f"include /etc/ldap/schema/{name}.schema\n"
                           for name in ("core", "cosine", "inetorgperson"))
        return (f"{includes}include {schema}\n"
                f"pidfile {self.directory / 'slapd.pid'}\n"
                f"argsfile {self.directory / 'slapd.args'}\n"
                "modulepath /usr/lib/ldap\n"
                "moduleload back_mdb\n"
                "database mdb\n"
                "maxsize 16777216\n"
                f'suffix "{SUFFIX}"\n'
                f'rootdn "{ROOT_DN}"\n'
                f"rootpw {ROOT_PASSWORD}\n"
                f"directory {self.directory / 'db'}\n"
                "index objectClass,mail eq\n"
                "access to * by * read\n")

    def _load(self) -> None:
        (self.directory / "db").mkdir(exist_ok=True)
        self.config_path.write_text(self.config())
        data = self.directory / "directory.ldif"
        data.write_text(self.ldif)
        loaded = subprocess.run([require_tool("slapadd"), "-f", str(self.config_path), "-l", str(data)],
                                capture_output=True, text=True)
        if loaded.returncode != 0:
            raise PeerError(f"slapadd ({self.config_path}) failed with {loaded.returncode}:\n"
                            f"{loaded.stdout}{loaded.stderr}")
        self._loaded = True

    def start(self, timeout: float = 20.0) -> "Slapd":
        if not self._loaded:
            self._load()
        with open(self.log_path, "ab") as log:
            # -d 0: stay in the foreground (the fixture owns the pid) and log nothing but errors.
            self.process = subprocess.Popen(
                [require_tool("slapd"), "-d", "0", "-f", str(self.config_path), "-h", self.url],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(HOST, self.port, timeout, process=self.process, log=self.log_path, what="slapd")
        except PeerError as error:
            self.stop()
            raise PeerError(f"slapd ({self.config_path}) did not start: {error}\n"
                            f"{tail_file(self.log_path)}") from None
        return self

    def stop(self) -> None:
        self.thaw()  # a stopped process would not act on SIGTERM
        stop_process(self.process)
        self.process = None

    def freeze(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, and never answered."""
        if self.process is None:
            raise PeerError("slapd is not running")
        os.kill(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen and self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
        self.frozen = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None
