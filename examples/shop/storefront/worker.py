"""The storefront's worker: takes order ids from the web dynos and finishes them at the API.

It listens on its private address (HEROKU_PRIVATE_IP), port 7000: inside a Private Space the
dynos of the space reach each other on every port from 1024 up, and nothing else reaches it.
"""

from __future__ import annotations

import os
import socketserver

from shop import WORKER_PORT, call


class Orders(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            order_id = line.decode().strip()
            if not order_id.isdigit():
                self.wfile.write(b"bad\n")
                continue
            self.wfile.write(b"ok\n")
            call("POST", f"/orders/{order_id}/done")
            print(f"{os.environ.get('DYNO')} finished order {order_id}", flush=True)


if __name__ == "__main__":
    address = os.environ["HEROKU_PRIVATE_IP"]
    print(f"worker listening on {address}:{WORKER_PORT}", flush=True)
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer((address, WORKER_PORT), Orders).serve_forever()
