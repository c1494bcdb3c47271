"""`mailferry oauth2`: the presets and what the command refuses before contacting anyone."""

from __future__ import annotations

import pytest

from mailferry.cli import oauth2
from mailferry.cli.options import UsageError


def resolve(tmp_path, *argv):
    return oauth2._resolve(oauth2._parser().parse_args(list(argv)), str(tmp_path))


def test_the_gmail_preset_uses_the_loopback_flow_and_the_gmail_key(tmp_path):
    options = resolve(tmp_path, "--provider", "gmail", "--client-id", "c", "--user", "u@gmail.com")
    assert options["flow"] == "loopback" and options["key"] == "[smtp.gmail.com]:587"
    assert options["token_endpoint"] == "https://oauth2.googleapis.com/token"
    assert options["scope"] == "https://mail.google.com/"
    with pytest.raises(UsageError, match="Google does not offer the Gmail scope through the device flow"):
        resolve(tmp_path, "--provider", "gmail", "--client-id", "c", "--user", "u", "--flow", "device")


def test_the_microsoft_preset_puts_the_tenant_in_its_endpoints(tmp_path):
    options = resolve(tmp_path, "--provider", "microsoft", "--tenant", "contoso.example", "--client-id", "c",
                      "--user", "alice@contoso.example")
    assert options["flow"] == "device" and options["key"] == "[smtp.office365.com]:587"
    assert options["device_endpoint"] == "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/devicecode"
    assert "offline_access" in options["scope"]


def test_without_a_preset_the_endpoints_and_the_key_must_be_given(tmp_path):
    with pytest.raises(UsageError, match="--provider gmail|microsoft, or --token-endpoint"):
        resolve(tmp_path, "--client-id", "c", "--user", "u")
    with pytest.raises(UsageError, match="--authorize-endpoint"):
        resolve(tmp_path, "--token-endpoint", "https://t/token", "--client-id", "c", "--user", "u", "--key", "k")
    with pytest.raises(UsageError, match="give --key"):
        resolve(tmp_path, "--token-endpoint", "https://t/token", "--device-endpoint", "https://t/d",
                "--client-id", "c", "--user", "u")
    (tmp_path / "main.cf").write_text("relayhost = [smtp.example.net]:587\n")
    options = resolve(tmp_path, "--token-endpoint", "https://t/token", "--device-endpoint", "https://t/d",
                      "--client-id", "c", "--user", "u")
    assert options["key"] == "[smtp.example.net]:587" and options["flow"] == "device"


def test_the_secret_may_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MAILFERRY_OAUTH2_CLIENT_SECRET", "from-env")
    options = resolve(tmp_path, "--provider", "gmail", "--client-id", "c", "--user", "u")
    assert options["client_secret"] == "from-env"


def test_pkce_challenge_is_the_s256_of_the_verifier():
    import base64
    import hashlib
    verifier, challenge = oauth2.pkce_pair()
    assert 43 <= len(verifier) <= 128
    assert challenge == base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
