"""The example shop, tested the way it runs: a Private Space, the orders API with internal
routing, the storefront (web + worker) that finds it through ORDERS_APP and finds its worker
through DNS discovery. Uses dynod's pytest plugin (dynod_space, dynod_app)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.root  # real dynos: a daemon, or root to start a throwaway one

SHOP = Path(__file__).resolve().parent.parent


@pytest.fixture
def shop(dynod_space: Any, dynod_app: Any) -> tuple[Any, Any]:
    space = dynod_space()
    orders = dynod_app(SHOP / "orders", space=space, internal_routing=True)
    storefront = dynod_app(
        SHOP / "storefront",
        formation={"web": 1, "worker": 1},
        space=space,
        config={"ORDERS_APP": orders.name},
    )
    return orders, storefront


def test_an_order_placed_through_the_router_gets_done(shop: tuple[Any, Any]) -> None:
    _, storefront = shop
    placed = storefront.post("/order", {"item": "tea"})
    assert placed.status == 201, placed.text
    order_id = placed.json()["id"]
    deadline = time.monotonic() + 30  # the worker finishes it a moment later
    while True:
        page = storefront.get("/")
        assert page.status == 200, page.text
        mine = [o for o in page.json()["orders"] if o["id"] == order_id]
        logged = f"finished order {order_id}" in storefront.logs()
        if mine and mine[0]["state"] == "done" and logged or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert mine == [{"id": order_id, "item": "tea", "state": "done"}], storefront.logs()
    assert logged, storefront.logs()  # the worker's own line: it was the worker that did it


def test_the_orders_api_is_not_reachable_from_the_host(shop: tuple[Any, Any]) -> None:
    orders, storefront = shop
    assert orders.get("/orders").status == 404  # internal routing: only its space's dynos
    assert storefront.get("/").status == 200


def test_the_workers_name_resolves_from_a_one_off(shop: tuple[Any, Any]) -> None:
    _, storefront = shop
    assert storefront.dns_names["worker"] == f"worker.{storefront.name}.app.localspace"
    worker_ip = next(d["ip"] for d in storefront.dynos() if d["type"] == "worker")
    status, output = storefront.run(
        "python3 -c 'import os, socket; "
        'print(socket.gethostbyname("worker." + os.environ["HEROKU_DNS_APP_NAME"]))\''
    )
    assert status == 0, output
    assert output.strip().splitlines()[-1] == worker_ip
