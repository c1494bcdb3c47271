"""A small OAuth2 authorization server on loopback, standing in for Google's and Microsoft's.

It runs in a thread of the test process (http.server), on 127.0.0.1 and a free port:
- POST /token: the refresh_token grant (RFC 6749 6) with short-lived access tokens, invalid_grant
  for a revoked or unknown refresh token; the device_code grant (RFC 8628 3.4, with
  authorization_pending until approve_device()); the authorization_code grant with PKCE S256
  (RFC 7636), checking code_verifier and redirect_uri.
- POST /device: a device authorization (RFC 8628 3.1).
- GET /authorize: the "browser" step of the code flow: it redirects (302) to the client's
  redirect_uri with code and state, as if the user had consented.
- POST /introspect: token introspection (RFC 7662) for Dovecot's oauth2 passdb
  (introspection_mode = post): {"active": true, "username": ...} while a token is valid.

Controls for the tests: revoke(), expire_access_tokens(), `lifetime`, and counters
(`refreshes`, `grants`) of what clients asked for.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CLIENT_ID = "mailferry-test-client"
CLIENT_SECRET = "test-client-secret"


class TokenEndpoint:
    def __init__(self, user: str, *, lifetime: float = 3600.0, host: str = "127.0.0.1",
                 client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET):
        self.user = user
        self.lifetime = lifetime
        self.host = host
        self.client_id = client_id
        self.client_secret = client_secret
        self.lock = threading.Lock()
        self.refresh_tokens: dict[str, bool] = {}        # token -> still valid
        self.access_tokens: dict[str, float] = {}        # token -> expiry (monotonic)
        self.devices: dict[str, dict] = {}               # device_code -> {user_code, approved}
        self.codes: dict[str, dict] = {}                 # authorization code -> its request
        self.refreshes = 0
        self.grants: list[str] = []
        self.introspections = 0
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # --- lifecycle
    def start(self) -> "TokenEndpoint":
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):   # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                path = urllib.parse.urlsplit(self.path).path
                handler = {"/token": endpoint._token, "/device": endpoint._device,
                           "/introspect": endpoint._introspect}.get(path)
                if handler is None:
                    return self._send(404, {"error": "not_found"})
                self._send(*handler(form, self.headers))

            def do_GET(self):
                parts = urllib.parse.urlsplit(self.path)
                if parts.path != "/authorize":
                    return self._send(404, {"error": "not_found"})
                status, location = endpoint._authorize(dict(urllib.parse.parse_qsl(parts.query)))
                self.send_response(status)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _send(self, status, body):
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer((self.host, 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="token-endpoint")
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.server_address[1]}"

    @property
    def token_url(self) -> str:
        return self.url + "/token"

    # --- controls
    def new_refresh_token(self) -> str:
        token = "rt-" + secrets.token_urlsafe(16)
        with self.lock:
            self.refresh_tokens[token] = True
        return token

    def revoke(self, refresh_token: str) -> None:
        with self.lock:
            self.refresh_tokens[refresh_token] = False

    def expire_access_tokens(self) -> None:
        """As if the provider had cut every access token short: the next AUTH is refused."""
        with self.lock:
            for token in self.access_tokens:
                self.access_tokens[token] = 0.0

    def approve_device(self, user_code: str) -> None:
        with self.lock:
            for device in self.devices.values():
                if device["user_code"] == user_code:
                    device["approved"] = True
                    return
        raise AssertionError(f"no device authorization with user code {user_code!r}")

    # --- the endpoints
    def _client_ok(self, form: dict) -> bool:
        return form.get("client_id") == self.client_id and form.get("client_secret", "") in ("", self.client_secret)

    def _issue(self, with_refresh: bool) -> dict:
        access = "at-" + secrets.token_urlsafe(16)
        with self.lock:
            self.access_tokens[access] = time.monotonic() + self.lifetime
        answer = {"access_token": access, "token_type": "Bearer", "expires_in": self.lifetime,
                  "scope": "https://mail.test/"}
        if with_refresh:
            answer["refresh_token"] = self.new_refresh_token()
        return answer

    def _token(self, form: dict, headers) -> tuple[int, dict]:
        grant = form.get("grant_type", "")
        with self.lock:
            self.grants.append(grant)
        if not self._client_ok(form):
            return 401, {"error": "invalid_client", "error_description": "Unauthorized client"}
        if grant == "refresh_token":
            with self.lock:
                valid = self.refresh_tokens.get(form.get("refresh_token", ""))
                self.refreshes += 1
            if not valid:
                return 400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
            return 200, self._issue(with_refresh=False)
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            with self.lock:
                device = self.devices.get(form.get("device_code", ""))
            if device is None:
                return 400, {"error": "invalid_grant"}
            if not device["approved"]:
                return 400, {"error": "authorization_pending"}
            return 200, self._issue(with_refresh=True)
        if grant == "authorization_code":
            with self.lock:
                request = self.codes.pop(form.get("code", ""), None)
            if request is None or request["redirect_uri"] != form.get("redirect_uri"):
                return 400, {"error": "invalid_grant", "error_description": "bad code or redirect_uri"}
            verifier = form.get("code_verifier", "")
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if request["code_challenge_method"] != "S256" or challenge != request["code_challenge"]:
                return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
            return 200, self._issue(with_refresh=True)
        return 400, {"error": "unsupported_grant_type"}

    def _device(self, form: dict, headers) -> tuple[int, dict]:
        if form.get("client_id") != self.client_id:
            return 401, {"error": "invalid_client"}
        device_code = secrets.token_urlsafe(16)
        user_code = secrets.token_hex(4).upper()
        with self.lock:
            self.devices[device_code] = {"user_code": user_code, "approved": False}
        return 200, {"device_code": device_code, "user_code": user_code, "verification_uri": self.url + "/device",
                     "expires_in": 600, "interval": 1}

    def _authorize(self, query: dict) -> tuple[int, str]:
        redirect = query.get("redirect_uri", "")
        if query.get("client_id") != self.client_id or query.get("response_type") != "code" \
                or not query.get("code_challenge"):
            return 302, f"{redirect}?error=invalid_request&state={query.get('state', '')}"
        code = secrets.token_urlsafe(12)
        with self.lock:
            self.codes[code] = {"redirect_uri": redirect, "code_challenge": query["code_challenge"],
                                "code_challenge_method": query.get("code_challenge_method", "plain")}
        return 302, f"{redirect}?{urllib.parse.urlencode({'code': code, 'state': query.get('state', '')})}"

    def _introspect(self, form: dict, headers) -> tuple[int, dict]:
        token = form.get("token", "")
        with self.lock:
            self.introspections += 1
            expiry = self.access_tokens.get(token)
        if expiry is None or time.monotonic() >= expiry:
            return 200, {"active": False}
        return 200, {"active": True, "username": self.user}
