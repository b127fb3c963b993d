"""The storefront's web process: the public face of the example shop.

GET  /          -> the orders, as the orders API has them
POST /order     item=tea -> creates the order at the API and hands it to a worker
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from shop import WORKER_PORT, call, worker_host


def hand_to_worker(order_id: int) -> None:
    """One line per order to any worker dyno: DNS discovery picks one (the answer rotates)."""
    with socket.create_connection((worker_host(), WORKER_PORT), timeout=5) as conn:
        conn.sendall(f"{order_id}\n".encode())
        conn.recv(16)  # the worker's "ok": the order reached it


class Storefront(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/":
            self._send(404, {"error": "no such path"})
            return
        try:
            self._send(200, {"dyno": os.environ.get("DYNO"), "orders": call("GET", "/orders")})
        except (OSError, urllib.error.URLError) as exc:
            self._send(502, {"error": f"orders API: {exc}"})

    def do_POST(self) -> None:
        if self.path != "/order":
            self._send(404, {"error": "no such path"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        item = (form.get("item") or [""])[0]
        if not item:
            self._send(400, {"error": "send item=NAME"})
            return
        try:
            order = call("POST", "/orders", {"item": item})
            if not isinstance(order, dict):
                raise OSError(f"unexpected answer {order!r}")
            hand_to_worker(int(order["id"]))
        except (OSError, urllib.error.URLError) as exc:
            self._send(502, {"error": f"could not place the order: {exc}"})
            return
        self._send(201, order)

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the router already logs one line per request


if __name__ == "__main__":
    port = int(os.environ["PORT"])
    print(f"storefront listening on {port}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Storefront).serve_forever()
