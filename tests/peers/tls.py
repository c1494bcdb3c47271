"""Throwaway certificate authorities and server certificates, made with the `openssl` command.

    ca = make_ca(tmp_path / "ca")
    cert, key = ca.issue("smtp.gmail.test", tmp_path / "server")

The server certificate names the host in subjectAltName (DNS:hostname and IP:127.0.0.1), so a
client that trusts `ca.cert_path` verifies it by name. A second `make_ca(...)` gives an unrelated
CA for "untrusted issuer" tests.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "2"


def openssl() -> str:
    tool = shutil.which("openssl")
    if not tool:
        raise AssertionError("openssl is required: run scripts/setup --test")
    return tool


def _run(*args: str) -> None:
    completed = subprocess.run([openssl(), *args], capture_output=True, text=True, timeout=60)
    if completed.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed:\n{completed.stderr}")


@dataclass(frozen=True)
class CA:
    name: str
    directory: Path
    cert_path: Path
    key_path: Path

    def issue(self, hostname: str, directory: Path | str, *,
              ips: tuple[str, ...] = ("127.0.0.1",), purpose: str = "serverAuth") -> tuple[Path, Path]:
        """A server certificate for `hostname` signed by this CA: (cert_path, key_path), PEM files.

        subjectAltName is DNS:hostname plus IP:ip for each of `ips`; `purpose` is the extended key
        usage (clientAuth for a client certificate).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        key = directory / f"{hostname}.key"
        csr = directory / f"{hostname}.csr"
        cert = directory / f"{hostname}.crt"
        extensions = directory / f"{hostname}.ext"
        extensions.write_text(
            f"subjectAltName = DNS:{hostname}{''.join(f', IP:{ip}' for ip in ips)}\n"
            "basicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature, keyEncipherment\n"
            f"extendedKeyUsage = {purpose}\n"
            # Python 3.13's default context sets VERIFY_X509_STRICT, which wants both key identifiers.
            "subjectKeyIdentifier = hash\n"
            "authorityKeyIdentifier = keyid:always\n")
        _run("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={hostname}",
             "-keyout", str(key), "-out", str(csr))
        _run("x509", "-req", "-in", str(csr), "-CA", str(self.cert_path), "-CAkey", str(self.key_path),
             "-CAcreateserial", "-days", DAYS, "-sha256", "-extfile", str(extensions), "-out", str(cert))
        key.chmod(0o600)
        return cert, key

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA and checks host names."""
        context = ssl.create_default_context(cafile=str(self.cert_path))
        assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
        return context


def make_ca(directory: Path | str, name: str = "mailferry test CA") -> CA:
    """A self-signed CA (key and certificate) in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    key, cert = directory / "ca.key", directory / "ca.crt"
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", DAYS, "-sha256",
         "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-keyout", str(key), "-out", str(cert))
    key.chmod(0o600)
    return CA(name=name, directory=directory, cert_path=cert, key_path=key)
