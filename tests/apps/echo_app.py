"""A dyno for the tests: tells who it is and records every hit on stdout.

On PORT (or APP_PORT): HTTP answers JSON with $DYNO, the request's headers and the environment;
UDP prints `udp-hit <source> <payload>`. On the port after it, plain TCP prints `tcp-other-hit`.
It listens on 0.0.0.0, or on $HEROKU_PRIVATE_IP when BIND_PRIVATE_IP is set.
Only the standard library: it runs with the system's python3, as an unprivileged user.
"""

import json
import os
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("PORT") or os.environ["APP_PORT"])
HOST = os.environ["HEROKU_PRIVATE_IP"] if os.environ.get("BIND_PRIVATE_IP") else "0.0.0.0"


def say(text: str) -> None:
    print(text, flush=True)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps(
            {
                "dyno": os.environ.get("DYNO"),
                "headers": dict(self.headers.items()),
                "env": dict(os.environ),
                "path": self.path,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        say(f"http-hit {self.client_address[0]} {self.path}")


def udp() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, PORT))
    while True:
        data, peer = sock.recvfrom(2048)
        say(f"udp-hit {peer[0]} {data.decode(errors='replace')}")


def other_tcp() -> None:
    server = socket.create_server((HOST, PORT + 1))
    while True:
        conn, peer = server.accept()
        say(f"tcp-other-hit {peer[0]}")
        conn.close()


for target in (udp, other_tcp):
    threading.Thread(target=target, daemon=True).start()
say(f"listening on {PORT} as uid {os.getuid()}")
sys.stdout.flush()
ThreadingHTTPServer((HOST, PORT), Handler).serve_forever()
