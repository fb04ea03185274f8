#!/usr/bin/env python3
"""Slack's auth.test and a Databricks workspace's OAuth discovery, on loopback, for the
container smoke test: enough for `check` to report both reachable. Prints its port.

Shapes: auth.test as Slack documents it (api.slack.com/methods/auth.test, example
response); discovery as the tests' fake Databricks serves it (tests/integration/common/
fake_databricks.rs, from a workspace's /oidc/.well-known/oauth-authorization-server).
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Upstreams(BaseHTTPRequestHandler):
    def answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()

    def do_GET(self):
        if self.path.startswith("/api/auth.test"):
            return self.answer({
                "ok": True, "url": "https://smoke.slack.com/", "team": "Smoke",
                "user": "databricks", "team_id": "T0SMOKE", "user_id": "U0SMOKE",
                "bot_id": "B0SMOKE", "is_enterprise_install": False,
            })
        if self.path == "/oidc/.well-known/oauth-authorization-server":
            base = f"http://127.0.0.1:{self.server.server_port}"
            return self.answer({
                "issuer": f"{base}/oidc",
                "authorization_endpoint": f"{base}/oidc/v1/authorize",
                "token_endpoint": f"{base}/oidc/v1/token",
                "code_challenge_methods_supported": ["S256"],
            })
        self.send_error(404)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Upstreams)
print(server.server_port, flush=True)
sys.stdout.close()
server.serve_forever()
