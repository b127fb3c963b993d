"""What the storefront's processes share: where the orders API and the worker are.

Both are found by name, never by address:
- the orders API through the space's router, as Heroku's internal routing names it:
  http://ORDERS_APP.herokuapp.localspace/ (ORDERS_APP is a config var);
- the worker through DNS service discovery: worker.APP.app.localspace has an A record for every
  running worker dyno of this app (the platform sets HEROKU_DNS_APP_NAME to APP.app.localspace).
"""

from __future__ import annotations

import json
import os
import urllib.request

WORKER_PORT = 7000


def orders_url(path: str) -> str:
    return f"http://{os.environ['ORDERS_APP']}.herokuapp.localspace{path}"


def worker_host() -> str:
    return f"worker.{os.environ['HEROKU_DNS_APP_NAME']}"


def call(method: str, path: str, body: object | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(orders_url(path), data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.loads(answer.read())
