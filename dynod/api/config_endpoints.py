"""The config var endpoints, as Heroku's Platform API has them:

    GET   /v1/apps/APP/config-vars  {"vars": {NAME: value}, "version": N}
    PATCH /v1/apps/APP/config-vars  body {NAME: "value" to set, NAME: null to unset}

An error names a field, never its value (values are secrets)."""

from __future__ import annotations

from typing import Any

from dynod.api.requests import json_type
from dynod.api.wire import Answer, Request
from dynod.control.configvars import ConfigService
from dynod.errors import DynodError


def config_changes(body: Any) -> dict[str, str | None]:
    """The PATCH body: a JSON object of names to strings (set) or null (unset)."""
    if not isinstance(body, dict):
        raise DynodError(
            f"the request body is JSON {json_type(body)}, not an object",
            'send {"NAME": "value"} to set a var, {"NAME": null} to unset it',
        )
    for name, value in body.items():
        if value is not None and not isinstance(value, str):
            raise DynodError(
                f"the value of {name!r} is JSON {json_type(value)}",
                "send a string to set it, or null to unset it",
            )
    return dict(body)


class ConfigEndpoints:
    def __init__(self, service: ConfigService) -> None:
        self.service = service

    def routes(self) -> list[tuple[str, tuple[str, ...], Any]]:
        return [
            ("GET", ("apps", "*", "config-vars"), self._get),
            ("PATCH", ("apps", "*", "config-vars"), self._change),
        ]

    async def _get(self, r: Request, app: str) -> Answer:
        return 200, self.service.get(app)

    async def _change(self, r: Request, app: str) -> Answer:
        return 200, await self.service.change(app, config_changes(r.body))
