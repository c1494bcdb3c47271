"""`mailferry oauth2`: get the first OAuth2 refresh token and write the credentials entry (mailferry's own).

    mailferry oauth2 --provider gmail|microsoft --client-id ID [--client-secret SECRET] --user ADDRESS
                     [--flow device|loopback] [--settings FILE] [--map TYPE:FILE] [--key NEXTHOP]
    mailferry oauth2 --token-endpoint URL (--device-endpoint URL | --authorize-endpoint URL) ...

The device flow (RFC 8628) prints a URL and a code to enter there, on any machine with a
browser, and polls the token endpoint until the administrator has agreed. The loopback
flow (RFC 8252, with PKCE, RFC 7636) listens on 127.0.0.1, prints the URL to open in a
browser on this machine (or through `ssh -L`), and takes the code the provider redirects
back with. The refresh token goes into an OAuth2 settings file (JSON, mode 0600, owned by
mail_owner); with --map, the `KEY USER:oauth2:FILE` line goes into that password map's
source file (replaced if the key is there) and the map is rebuilt as postmap would.
Without --map, the line to add is printed. Secrets are never printed. See docs/oauth2.md.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.server
import json
import os
import pwd
import secrets
import threading
import time
import urllib.parse

from mailferry.cli.options import UsageError
from mailferry.cli.output import Reporter
from mailferry.delivery.oauth2 import OAuth2Error, oauth_error_text, post_form

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"

# Documented in docs/oauth2.md. Google does not allow the Gmail scope in its device flow, so
# Gmail uses the loopback flow; Microsoft 365 allows both (device by default).
PROVIDERS = {
    "gmail": {
        "authorize_endpoint": "https://accounts.google.com/o/oauth2/v2/auth",
        "token_endpoint": "https://oauth2.googleapis.com/token",
        "device_endpoint": "",
        "scope": "https://mail.google.com/",
        "key": "[smtp.gmail.com]:587",
        "flow": "loopback",
        "extra": {"access_type": "offline", "prompt": "consent"},
    },
    "microsoft": {
        "authorize_endpoint": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize",
        "token_endpoint": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
        "device_endpoint": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode",
        "scope": "https://outlook.office.com/SMTP.Send offline_access",
        "key": "[smtp.office365.com]:587",
        "flow": "device",
        "extra": {},
    },
}
INDEXED_TYPES = ("hash", "btree", "lmdb", "cdb", "dbm", "sdbm")


class FlowError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailferry oauth2", description="Get an OAuth2 refresh token for "
                                     "XOAUTH2/OAUTHBEARER relaying and write the credentials entry.")
    parser.add_argument("--provider", choices=sorted(PROVIDERS), help="endpoint presets (docs/oauth2.md)")
    parser.add_argument("--tenant", default="common", help="Microsoft 365 tenant (default: common)")
    parser.add_argument("--token-endpoint")
    parser.add_argument("--device-endpoint")
    parser.add_argument("--authorize-endpoint")
    parser.add_argument("--scope")
    parser.add_argument("--client-id")
    parser.add_argument("--client-secret", default=None,
                        help="the client secret (or set MAILFERRY_OAUTH2_CLIENT_SECRET, which stays out of ps)")
    parser.add_argument("--user", help="the mail account (e.g. user.name@gmail.com)")
    parser.add_argument("--flow", choices=("device", "loopback"))
    parser.add_argument("--settings", help="the settings file to write (default: $config_directory/oauth2/USER.json)")
    parser.add_argument("--map", help="the password map to add the entry to, e.g. hash:/etc/mailferry/sasl_passwd")
    parser.add_argument("--key", help="the map key (default: the provider's, or main.cf's relayhost)")
    parser.add_argument("--listen-port", type=int, default=0, help="loopback flow: the port (default: any free one)")
    parser.add_argument("--timeout", type=float, default=600.0, help="how long to wait for the administrator")
    return parser


def run(argv: list[str], config_dir: str, reporter: Reporter) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        options = _resolve(args, config_dir)
    except UsageError as error:
        return reporter.fatal(str(error))
    try:
        if options["flow"] == "device":
            answer = device_flow(options, args.timeout)
        else:
            answer = loopback_flow(options, args.timeout, args.listen_port)
    except (FlowError, OAuth2Error) as error:
        return reporter.fatal(str(error))
    refresh_token = answer.get("refresh_token")
    if not isinstance(refresh_token, str) or not refresh_token:
        return reporter.fatal("the token endpoint answered without a refresh_token: for Google, the consent "
                              "screen must ask for offline access; for Microsoft, the scope needs offline_access")
    try:
        path = write_settings(options, refresh_token, config_dir)
        line = f"{options['key']} {options['user']}:oauth2:{path}"
        if args.map:
            write_map_entry(args.map, options["key"], line, config_dir, reporter)
            print(f"mailferry oauth2: wrote {path} (mode 0600) and the entry for {options['key']} in {args.map}",
                  flush=True)
        else:
            print(f"mailferry oauth2: wrote {path} (mode 0600); add this line to smtp_sasl_password_maps "
                  f"and run postmap:\n{line}", flush=True)
    except (OSError, UsageError) as error:
        return reporter.fatal(f"cannot write the entry: {error}")
    print("mailferry oauth2: set smtp_sasl_mechanism_filter = xoauth2 and smtp_sasl_security_options = "
          "noanonymous with smtp_tls_security_level = encrypt (docs/oauth2.md)", flush=True)
    return 0


def _resolve(args, config_dir: str) -> dict:
    preset = PROVIDERS.get(args.provider or "", {})
    tenant = args.tenant

    def pick(name: str) -> str:
        value = getattr(args, name) or preset.get(name, "")
        return value.replace("{tenant}", tenant) if isinstance(value, str) else value
    options = {name: pick(name) for name in ("token_endpoint", "device_endpoint", "authorize_endpoint", "scope")}
    if not options["token_endpoint"]:
        raise UsageError("give --provider gmail|microsoft, or --token-endpoint URL")
    if not args.client_id:
        raise UsageError("give --client-id (the OAuth client you registered: docs/oauth2.md says how)")
    if not args.user:
        raise UsageError("give --user, the mail account the token is for")
    flow = args.flow or preset.get("flow") or ("device" if options["device_endpoint"] else "loopback")
    if flow == "device" and not options["device_endpoint"]:
        raise UsageError("the device flow needs --device-endpoint" + (
            " (Google does not offer the Gmail scope through the device flow: use --flow loopback)"
            if args.provider == "gmail" else ""))
    if flow == "loopback" and not options["authorize_endpoint"]:
        raise UsageError("the loopback flow needs --authorize-endpoint")
    key = args.key or preset.get("key") or _relayhost(config_dir)
    if not key:
        raise UsageError("give --key, the next hop as smtp_sasl_password_maps is looked up "
                         "(e.g. [smtp.example.com]:587)")
    secret = args.client_secret
    if secret is None:
        secret = os.environ.get("MAILFERRY_OAUTH2_CLIENT_SECRET", "")
    options.update(flow=flow, client_id=args.client_id, client_secret=secret, user=args.user, key=key,
                   settings=args.settings, extra=preset.get("extra", {}))
    return options


def _config(config_dir: str):
    from mailferry.config.config import load
    try:
        return load(config_dir)
    except Exception:    # noqa: BLE001 - no main.cf yet is fine here: the defaults serve
        return None


def _relayhost(config_dir: str) -> str:
    config = _config(config_dir)
    return (config.get("relayhost") or "").strip() if config is not None else ""


# --- the flows -----------------------------------------------------------------------------------

def _client_fields(options: dict) -> dict:
    fields = {"client_id": options["client_id"]}
    if options["client_secret"]:
        fields["client_secret"] = options["client_secret"]
    return fields


def device_flow(options: dict, timeout: float, sleep=time.sleep) -> dict:
    """RFC 8628: ask for a user code, show it, poll until the administrator agreed."""
    status, answer = post_form(options["device_endpoint"], {**_client_fields(options), "scope": options["scope"]})
    if status != 200 or "device_code" not in answer:
        raise FlowError(f"device authorization refused by {options['device_endpoint']} (HTTP {status}): "
                        f"{oauth_error_text(answer)}")
    uri = answer.get("verification_uri_complete") or answer.get("verification_uri") or answer.get("verification_url")
    print(f"mailferry oauth2: open {uri} in a browser and enter the code {answer.get('user_code')}", flush=True)
    print(f"mailferry oauth2: sign in as {options['user']} and allow access; waiting...", flush=True)
    interval = float(answer.get("interval", 5))
    deadline = time.monotonic() + min(timeout, float(answer.get("expires_in", timeout)))
    while time.monotonic() < deadline:
        sleep(interval)
        status, token = post_form(options["token_endpoint"], {
            **_client_fields(options), "grant_type": DEVICE_GRANT, "device_code": answer["device_code"]})
        error = token.get("error")
        if status == 200 and not error:
            return token
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5
            continue
        raise FlowError(f"the token endpoint refused the device code: {oauth_error_text(token)}")
    raise FlowError("timed out waiting for the administrator to enter the code: run mailferry oauth2 again")


class _Redirect(http.server.BaseHTTPRequestHandler):
    result: dict = {}
    done: threading.Event

    def do_GET(self):
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        if "code" not in query and "error" not in query:
            self.send_response(404)
            self.end_headers()
            return
        self.server.result.update(query)      # type: ignore[attr-defined]
        body = b"mailferry: authorization received; you can close this window.\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.done.set()                 # type: ignore[attr-defined]

    def log_message(self, *args):
        pass


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(64)[:96]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()
    return verifier, challenge


def loopback_flow(options: dict, timeout: float, port: int = 0) -> dict:
    """RFC 8252 with PKCE: a listener on 127.0.0.1 takes the code the browser is redirected with."""
    server = http.server.HTTPServer(("127.0.0.1", port), _Redirect)
    server.result = {}                                     # type: ignore[attr-defined]
    server.done = threading.Event()                        # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        redirect_uri = f"http://127.0.0.1:{server.server_address[1]}/"
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(16)
        query = {"response_type": "code", "client_id": options["client_id"], "redirect_uri": redirect_uri,
                 "scope": options["scope"], "state": state, "code_challenge": challenge,
                 "code_challenge_method": "S256", "login_hint": options["user"], **options.get("extra", {})}
        url = f"{options['authorize_endpoint']}?{urllib.parse.urlencode(query)}"
        print(f"mailferry oauth2: open this URL in a browser on this machine (or through ssh -L "
              f"{server.server_address[1]}:127.0.0.1:{server.server_address[1]}):\n{url}", flush=True)
        print(f"mailferry oauth2: sign in as {options['user']} and allow access; waiting on {redirect_uri} ...",
              flush=True)
        if not server.done.wait(timeout):                  # type: ignore[attr-defined]
            raise FlowError("timed out waiting for the browser to come back: run mailferry oauth2 again")
        result = dict(server.result)                       # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
    if result.get("state") != state:
        raise FlowError("the redirect's state does not match this request: refusing it (start again)")
    if "error" in result:
        raise FlowError(f"the provider refused the authorization: {oauth_error_text(result)}")
    status, token = post_form(options["token_endpoint"], {
        **_client_fields(options), "grant_type": "authorization_code", "code": result["code"],
        "redirect_uri": redirect_uri, "code_verifier": verifier})
    if status != 200 or "error" in token:
        raise FlowError(f"the token endpoint refused the authorization code (HTTP {status}): "
                        f"{oauth_error_text(token)}")
    return token


# --- writing the entry ---------------------------------------------------------------------------

def _mail_owner(config_dir: str) -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    config = _config(config_dir)
    name = (config.get("mail_owner") if config is not None else None) or "mailferry"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def write_settings(options: dict, refresh_token: str, config_dir: str) -> str:
    """The settings file, mode 0600, owned by mail_owner (the delivery agent reads it as mail_owner)."""
    owner = _mail_owner(config_dir)
    path = options["settings"]
    if not path:
        directory = os.path.join(config_dir, "oauth2")
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700)
            if owner is not None:
                os.chown(directory, *owner)
        safe = "".join(char if char.isalnum() or char in "@._-" else "_" for char in options["user"])
        path = os.path.join(directory, f"{safe}.json")
    path = os.path.abspath(path)
    data = {"user": options["user"], "token_endpoint": options["token_endpoint"],
            "client_id": options["client_id"], "refresh_token": refresh_token}
    if options["client_secret"]:
        data["client_secret"] = options["client_secret"]
    if options["scope"]:
        data["scope"] = options["scope"]
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, (json.dumps(data, indent=1) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    return path


def write_map_entry(spec: str, key: str, line: str, config_dir: str, reporter: Reporter) -> None:
    """Replace `key`'s line in the map's source file (or append it), keep it 0600, rebuild it."""
    type_name, colon, source = spec.partition(":")
    if not colon or not source.startswith("/"):
        raise UsageError(f"--map {spec}: give TYPE:/absolute/file, e.g. hash:/etc/mailferry/sasl_passwd")
    lines: list[str] = []
    if os.path.exists(source):
        with open(source, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    replaced = False
    for index, existing in enumerate(lines):
        fields = existing.split(None, 1)
        if fields and not existing.startswith(("#", " ", "\t")) and fields[0].lower() == key.lower():
            lines[index] = line
            replaced = True
    if not replaced:
        lines.append(line)
    temporary = f"{source}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, ("\n".join(lines) + "\n").encode())
    finally:
        os.close(fd)
    os.replace(temporary, source)
    if type_name in INDEXED_TYPES:
        from mailferry.cli import postmap
        if postmap.run([spec], config_dir, reporter) != 0:
            raise UsageError(f"postmap {spec} failed")
        print(f"mailferry oauth2: rebuilt {spec}; run `mailferry reload` so a running daemon reads it", flush=True)
    else:
        print("mailferry oauth2: run `mailferry reload` so a running daemon reads the table", flush=True)
