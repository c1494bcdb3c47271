import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "tests" / "golden" / "seed"


class Result:
    def __init__(self, completed):
        self.code = completed.returncode
        self.out = completed.stdout
        self.err = completed.stderr


@pytest.fixture
def mailferry():
    """Run the real `mailferry` command line in a child process."""
    def run(*args, stdin=None, config_dir=None):
        command = [sys.executable, "-m", "mailferry"]
        if config_dir is not None:
            command += ["-c", str(config_dir)]
        completed = subprocess.run(command + [str(arg) for arg in args], input=stdin,
                                   capture_output=True, text=True, timeout=60)
        return Result(completed)
    return run


@pytest.fixture
def make_ca(tmp_path):
    """A real CA certificate made by openssl, for CAfile checks."""
    def make(name="cacert.pem"):
        openssl = shutil.which("openssl")
        assert openssl, "openssl is required: run scripts/setup --test"
        key, cert = tmp_path / "ca.key", tmp_path / name
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=mailferry test CA", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True)
        return cert
    return make


def seed_file(name):
    return (SEED / name).read_text()


def write(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.fixture
def unreachable_ldap(tmp_path) -> str:
    """`ldap:FILE` whose only server refuses connections (nothing listens on loopback port 1):
    every lookup is a temporary failure, at once. For tests of what callers do with one."""
    path = tmp_path / "unreachable-ldap.cf"
    path.write_text("server_host = ldap://127.0.0.1:1/\nbind = no\n")
    return f"ldap:{path}"
