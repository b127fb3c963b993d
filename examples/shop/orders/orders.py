"""The orders API of the example shop: an internal-routing app.

Only dynos of its space reach it, through the space's router as
http://APP.herokuapp.localspace/ (Heroku's internal routing). It keeps orders in memory:

    GET  /orders             -> [{"id": 1, "item": "tea", "state": "new"}, ...]
    POST /orders             {"item": "tea"} -> the new order (201)
    POST /orders/ID/done     -> the order, now "done"
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ORDERS: list[dict[str, object]] = []
LOCK = threading.Lock()


class Orders(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/orders":
            self._send(404, {"error": "no such path"})
            return
        with LOCK:
            self._send(200, list(ORDERS))

    def do_POST(self) -> None:
        parts = self.path.strip("/").split("/")
        if parts == ["orders"]:
            self._create()
        elif len(parts) == 3 and parts[0] == "orders" and parts[2] == "done":
            self._finish(parts[1])
        else:
            self._send(404, {"error": "no such path"})

    def _create(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            item = str(json.loads(self.rfile.read(length))["item"])
        except (ValueError, KeyError, TypeError):
            self._send(400, {"error": 'send {"item": "..."}'})
            return
        with LOCK:
            order = {"id": len(ORDERS) + 1, "item": item, "state": "new"}
            ORDERS.append(order)
        print(f"order {order['id']} created: {item}", flush=True)
        self._send(201, order)

    def _finish(self, ident: str) -> None:
        with LOCK:
            found = [o for o in ORDERS if str(o["id"]) == ident]
            for order in found:
                order["state"] = "done"
        if not found:
            self._send(404, {"error": f"no order {ident}"})
            return
        print(f"order {ident} done", flush=True)
        self._send(200, found[0])

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
    print(f"orders API listening on {port}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Orders).serve_forever()
