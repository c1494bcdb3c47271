"""delivery/oauth2.py: settings, the token cache, refresh and its sharing, status, the SASL exchanges.

The token endpoint is tests/peers/oauth2_endpoint.py on loopback, run in this process.
"""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing
import os
import stat

import pytest

from mailferry.delivery import oauth2, sasl
from mailferry.maillog import MemoryLog
from tests.peers.oauth2_endpoint import CLIENT_ID, CLIENT_SECRET, TokenEndpoint


@pytest.fixture
def endpoint():
    server = TokenEndpoint("user@example.test").start()
    yield server
    server.stop()


def write_settings(tmp_path, endpoint, refresh_token=None, **extra):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"token_endpoint": endpoint.token_url, "client_id": CLIENT_ID,
                                "client_secret": CLIENT_SECRET,
                                "refresh_token": refresh_token or endpoint.new_refresh_token(),
                                "user": "user@example.test", **extra}))
    return oauth2.load_settings(str(path))


class Clock:
    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


# --- the password map entry --------------------------------------------------------------------

def test_an_oauth2_password_names_a_settings_file_and_picks_the_oauth2_mechanisms():
    entry = sasl.Credentials("user@gmail.com", "oauth2:/etc/mailferry/oauth2/gmail.json")
    assert entry.oauth2_settings == "/etc/mailferry/oauth2/gmail.json"
    assert entry.mechanisms == ("XOAUTH2", "OAUTHBEARER")
    plain = sasl.Credentials("user@gmail.com", "secret")
    assert plain.oauth2_settings is None and plain.mechanisms == ("PLAIN", "LOGIN")


def test_xoauth2_is_plaintext_equivalent_as_cyrus_flags_it():
    choose = lambda options, offered=("PLAIN", "XOAUTH2"), filt=(): sasl.choose_mechanism(  # noqa: E731
        offered, mechanism_filter=list(filt), security_options=options,
        options_parameter="smtp_sasl_tls_security_options", supported=sasl.OAUTH2_SUPPORTED)
    with pytest.raises(sasl.NoMechanism) as refused:
        choose(["noplaintext", "noanonymous"])
    assert "noanonymous forbids PLAIN XOAUTH2 (plaintext passwords); to allow them over TLS, set " \
           "smtp_sasl_tls_security_options = noanonymous" in str(refused.value)
    assert choose(["noanonymous"]) == "XOAUTH2"
    assert choose(["noanonymous"], ("XOAUTH2", "OAUTHBEARER"), ["oauthbearer"]) == "OAUTHBEARER"
    with pytest.raises(sasl.NoMechanism) as only_plain:
        choose(["noanonymous"], ("PLAIN", "LOGIN"))
    assert str(only_plain.value) == ("the server offers PLAIN LOGIN only; mailferry's SASL client supports "
                                     "XOAUTH2 and OAUTHBEARER for an OAuth2 entry (oauth2:FILE)")


def test_without_tls_the_advice_is_to_require_tls():
    with pytest.raises(sasl.NoMechanism) as refused:
        sasl.choose_mechanism(("XOAUTH2",), mechanism_filter=["xoauth2"], security_options=["noplaintext"],
                              options_parameter="smtp_sasl_security_options", supported=sasl.OAUTH2_SUPPORTED)
    assert "require TLS (smtp_tls_security_level = encrypt)" in str(refused.value)


def test_the_entry_is_found_under_the_same_keys_in_the_same_order():
    asyncio.run(_the_entry_is_found_under_the_same_keys_in_the_same_order())


async def _the_entry_is_found_under_the_same_keys_in_the_same_order():
    class Maps:
        asked: list = []

        async def lookup(self, key, partial=False):
            from mailferry.tables.result import MISSING, found
            self.asked.append(key)
            if key == "[smtp.gmail.com]:587":
                return found("user@gmail.com:oauth2:/etc/g.json")
            return MISSING
    maps = Maps()
    key, entry = await sasl.find_credentials_entry(maps, sender="a@example.com", sender_dependent=True,
                                                   hostname="smtp.gmail.com", nexthop="[smtp.gmail.com]:587")
    assert key == "[smtp.gmail.com]:587" and entry.oauth2_settings == "/etc/g.json"
    assert maps.asked == ["a@example.com", "@example.com", "smtp.gmail.com", "[smtp.gmail.com]:587"]


# --- settings ------------------------------------------------------------------------------------

def test_settings_problems_name_the_file_and_what_to_do(tmp_path):
    with pytest.raises(oauth2.OAuth2Error, match=r"does not exist: create it with `mailferry oauth2`"):
        oauth2.load_settings(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"token_endpoint": "https://x/token"}')
    with pytest.raises(oauth2.OAuth2Error, match=r"has no client_id, refresh_token: write it again"):
        oauth2.load_settings(str(bad))
    settings = oauth2.OAuth2Settings("/s.json", "https://t/token", "client", "the-secret", "the-refresh-token")
    assert "the-secret" not in repr(settings) and "the-refresh-token" not in repr(settings)


def test_the_margin_is_a_fifth_of_the_lifetime_and_at_most_five_minutes():
    assert oauth2.refresh_margin(3600) == 300
    assert oauth2.refresh_margin(10) == 2


# --- refresh, cache, sharing ----------------------------------------------------------------------

def test_a_token_is_cached_0600_and_reused_until_the_margin(tmp_path, endpoint):
    asyncio.run(_a_token_is_cached_0600_and_reused_until_the_margin(tmp_path, endpoint))


async def _a_token_is_cached_0600_and_reused_until_the_margin(tmp_path, endpoint):
    settings = write_settings(tmp_path, endpoint)
    clock = Clock()
    endpoint.lifetime = 100
    manager = oauth2.TokenManager(str(tmp_path / "cache"), MemoryLog(), clock=clock)
    first = await manager.access_token(settings)
    assert endpoint.refreshes == 1
    [cached] = (tmp_path / "cache").glob("*.json")
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    clock.now += 79                      # refresh at 100 - 20
    assert await manager.access_token(settings) == first and endpoint.refreshes == 1
    # a new manager (a restart) reads the same cache
    again = oauth2.TokenManager(str(tmp_path / "cache"), MemoryLog(), clock=clock)
    assert await again.access_token(settings) == first and endpoint.refreshes == 1
    clock.now += 2                       # inside the margin: refreshed before it expires
    second = await manager.access_token(settings)
    assert second != first and endpoint.refreshes == 2


def test_a_refused_token_is_refreshed_once_even_when_the_cache_thinks_it_is_good(tmp_path, endpoint):
    asyncio.run(_a_refused_token_is_refreshed_once_even_when_the_cache_thinks_it_is_good(tmp_path, endpoint))


async def _a_refused_token_is_refreshed_once_even_when_the_cache_thinks_it_is_good(tmp_path, endpoint):
    settings = write_settings(tmp_path, endpoint)
    manager = oauth2.TokenManager(str(tmp_path / "cache"), MemoryLog())
    first = await manager.access_token(settings)
    second = await manager.access_token(settings, stale=first)
    assert second != first and endpoint.refreshes == 2
    # a delivery that was refused the first token after another one already refreshed: no new refresh
    assert await manager.access_token(settings, stale=first) == second and endpoint.refreshes == 2


def test_concurrent_deliveries_share_one_refresh(tmp_path, endpoint):
    asyncio.run(_concurrent_deliveries_share_one_refresh(tmp_path, endpoint))


async def _concurrent_deliveries_share_one_refresh(tmp_path, endpoint):
    settings = write_settings(tmp_path, endpoint)
    manager = oauth2.TokenManager(str(tmp_path / "cache"), MemoryLog())
    tokens = await asyncio.gather(*(manager.access_token(settings) for _ in range(20)))
    assert len(set(tokens)) == 1 and endpoint.refreshes == 1


def _refresh_in_a_process(directory, path, queue):
    settings = oauth2.load_settings(path)
    queue.put(asyncio.run(oauth2.TokenManager(directory).access_token(settings)))


def test_processes_share_one_refresh_through_the_lock(tmp_path, endpoint):
    settings = write_settings(tmp_path, endpoint)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    processes = [context.Process(target=_refresh_in_a_process, args=(str(tmp_path / "cache"), settings.path, queue))
                 for _ in range(4)]
    for process in processes:
        process.start()
    tokens = {queue.get(timeout=30) for _ in processes}
    for process in processes:
        process.join(timeout=30)
    assert len(tokens) == 1 and endpoint.refreshes == 1


def test_a_revoked_refresh_token_says_what_to_do_and_never_logs_secrets(tmp_path, endpoint):
    asyncio.run(_a_revoked_refresh_token_says_what_to_do_and_never_logs_secrets(tmp_path, endpoint))


async def _a_revoked_refresh_token_says_what_to_do_and_never_logs_secrets(tmp_path, endpoint):
    refresh_token = endpoint.new_refresh_token()
    settings = write_settings(tmp_path, endpoint, refresh_token)
    endpoint.revoke(refresh_token)
    log = MemoryLog()
    manager = oauth2.TokenManager(str(tmp_path / "cache"), log)
    with pytest.raises(oauth2.RefreshTokenRefused) as refused:
        await manager.access_token(settings)
    text = str(refused.value)
    assert "invalid_grant (Token has been expired or revoked.)" in text
    assert f"`mailferry oauth2 --settings {settings.path} ...`" in text
    assert refresh_token not in text and CLIENT_SECRET not in text
    assert not [line for line in log.texts() if refresh_token in line or CLIENT_SECRET in line]
    status = oauth2.token_status(settings, str(tmp_path / "cache"))
    assert status.state == "refused" and "invalid_grant" in status.text


def test_an_unreachable_endpoint_is_a_temporary_error(tmp_path, endpoint):
    asyncio.run(_an_unreachable_endpoint_is_a_temporary_error(tmp_path, endpoint))


async def _an_unreachable_endpoint_is_a_temporary_error(tmp_path, endpoint):
    settings = write_settings(tmp_path, endpoint)
    endpoint.stop()
    with pytest.raises(oauth2.OAuth2Error, match="unreachable"):
        await oauth2.TokenManager(str(tmp_path / "cache")).access_token(settings)


def test_a_rotated_refresh_token_is_kept_for_the_next_refresh(tmp_path, endpoint):
    asyncio.run(_a_rotated_refresh_token_is_kept_for_the_next_refresh(tmp_path, endpoint))


async def _a_rotated_refresh_token_is_kept_for_the_next_refresh(tmp_path, endpoint):
    settings = write_settings(tmp_path, endpoint)
    original = endpoint._issue

    def rotating(with_refresh):
        return original(with_refresh=True)
    endpoint._issue = rotating
    manager = oauth2.TokenManager(str(tmp_path / "cache"))
    first = await manager.access_token(settings)
    endpoint.revoke(settings.refresh_token)          # the old one no longer works after rotation
    assert await manager.access_token(settings, stale=first) != first


def test_token_status_never_shows_the_token(tmp_path, endpoint):
    asyncio.run(_token_status_never_shows_the_token(tmp_path, endpoint))


async def _token_status_never_shows_the_token(tmp_path, endpoint):
    settings = write_settings(tmp_path, endpoint)
    directory = str(tmp_path / "cache")
    assert oauth2.token_status(settings, directory).state == "none"
    clock = Clock()
    token = await oauth2.TokenManager(directory, clock=clock).access_token(settings)
    status = oauth2.token_status(settings, directory, now=clock.now + 1)
    assert status.state == "valid" and token not in status.text and "valid until" in status.text
    assert oauth2.token_status(settings, directory, now=clock.now + 3590).state == "refresh-due"
    assert oauth2.token_status(settings, directory, now=clock.now + 3601).state == "expired"


# --- the exchanges ---------------------------------------------------------------------------------

def test_xoauth2_and_oauthbearer_initial_responses():
    xoauth2 = oauth2.OAuth2Exchange("xoauth2", "user@gmail.com", "ya29.TOKEN")
    assert xoauth2.initial_response() == b"user=user@gmail.com\x01auth=Bearer ya29.TOKEN\x01\x01"
    bearer = oauth2.OAuth2Exchange("OAUTHBEARER", "a,b=c@x", "T", "smtp.gmail.com", 587)
    assert bearer.initial_response() == b"n,a=a=2Cb=3Dc@x,\x01host=smtp.gmail.com\x01port=587\x01auth=Bearer T\x01\x01"


def test_an_error_challenge_is_answered_empty_and_marks_the_token_refused():
    exchange = oauth2.OAuth2Exchange("XOAUTH2", "u", "t")
    error = base64.b64decode(base64.b64encode(b'{"status":"401","schemes":"bearer","scope":"mail"}'))
    assert exchange.answer(error) == b"" and exchange.refused_token
    assert exchange.error_text() == "schemes=bearer, scope=mail, status=401"
    assert oauth2.OAuth2Exchange("OAUTHBEARER", "u", "t").answer(b"{}") == b"\x01"
    with pytest.raises(ValueError):
        exchange.answer(b"again")


def test_the_cache_file_name_changes_with_a_new_refresh_token(tmp_path):
    one = oauth2.OAuth2Settings(str(tmp_path / "s.json"), "http://t", "c", "", "r1")
    two = oauth2.OAuth2Settings(str(tmp_path / "s.json"), "http://t", "c", "", "r2")
    assert one.cache_key != two.cache_key
    assert os.path.basename(oauth2.TokenCache("/x").path(one)) == one.cache_key + ".json"


def test_run_as_root_the_cache_stays_the_queue_directory_owners(tmp_path, endpoint):
    """relay-check runs as root; the daemon, as mail_owner, must still read and replace what it wrote."""
    import pwd
    if os.geteuid() != 0:
        raise AssertionError("this test needs root, as CI has")
    nobody = pwd.getpwnam("nobody")
    queue = tmp_path / "queue"
    queue.mkdir()
    os.chown(queue, nobody.pw_uid, nobody.pw_gid)
    settings = write_settings(tmp_path, endpoint)
    asyncio.run(oauth2.TokenManager(oauth2.cache_directory(str(queue))).access_token(settings))
    made = [queue / "oauth2", *(queue / "oauth2").iterdir()]
    assert {path.name.rsplit(".", 1)[-1] for path in made[1:]} == {"json", "lock"}
    assert {(path.stat().st_uid, path.stat().st_gid) for path in made} == {(nobody.pw_uid, nobody.pw_gid)}


def test_entry_status_for_relay_check(tmp_path, endpoint):
    assert oauth2.entry_status("a plain password", str(tmp_path)) is None
    missing = oauth2.entry_status(f"oauth2:{tmp_path}/missing.json", str(tmp_path))
    assert missing.state == "unusable" and "does not exist" in missing.text
    settings = write_settings(tmp_path, endpoint)
    assert oauth2.entry_status(f"oauth2:{settings.path}", str(tmp_path)).state == "none"
    asyncio.run(oauth2.TokenManager(oauth2.cache_directory(str(tmp_path))).access_token(settings))
    assert oauth2.entry_status(f"oauth2:{settings.path}", str(tmp_path)).state == "valid"
