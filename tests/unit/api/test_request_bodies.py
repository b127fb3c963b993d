"""Every API body becomes a typed request (api/requests.py), with the field named in each 400."""

from __future__ import annotations

from typing import Any

import pytest

from dynod.api.requests import CreateApp, CreateSpace, RunRequest, SetFeature, TrustedRange
from dynod.errors import DynodError


def test_bodies_become_typed_requests() -> None:
    assert CreateSpace.from_body({"name": "acme"}) == CreateSpace("acme", None, None)
    assert CreateSpace.from_body(
        {"name": "acme", "cidr": "10.7.0.0/16", "nat_ip": None}
    ) == CreateSpace("acme", "10.7.0.0/16", None)
    assert CreateApp.from_body({"name": "api", "space": "acme", "internal_routing": True}) == (
        CreateApp("api", "acme", True)
    )
    assert CreateApp.from_body({"name": "web", "internal_routing": None}) == CreateApp("web")
    assert SetFeature.from_body("api", "f", {"enabled": False}) == SetFeature("api", "f", False)
    assert TrustedRange.from_body("acme", {"cidr": "10.0.0.0/8"}) == TrustedRange(
        "acme", "10.0.0.0/8"
    )


@pytest.mark.parametrize(
    ("parse", "problem"),
    [
        (lambda: CreateSpace.from_body({"name": "acme", "colour": 1}), "unknown field 'colour'"),
        (lambda: CreateSpace.from_body({}), "the field 'name' must be a string, and it is missing"),
        (
            lambda: CreateSpace.from_body({"name": "acme", "cidr": 10}),
            "the field 'cidr' must be a string, and it is JSON number",
        ),
        (
            lambda: CreateApp.from_body({"name": "api", "internal_routing": "yes"}),
            "the field 'internal_routing' must be true or false, and it is JSON string \"yes\"",
        ),
        (
            lambda: SetFeature.from_body("api", "f", {}),
            "the field 'enabled' must be true or false, and it is missing",
        ),
        (lambda: TrustedRange.from_body("acme", ["10.0.0.0/8"]), "JSON array, not an object"),
    ],
)
def test_a_body_of_the_wrong_shape_is_a_400_naming_the_field(parse: Any, problem: str) -> None:
    with pytest.raises(DynodError) as err:
        parse()
    assert err.value.problem == problem or problem in err.value.problem
    assert err.value.status == 400 and err.value.fix


def test_a_run_s_inherited_variables_are_the_caller_s_four_and_apart_from_env() -> None:
    body = {"env": {"TZ": "Asia/Tokyo"}, "inherited": {"TZ": "UTC", "PATH": "/bin"}}
    parsed = RunRequest.from_body("a", body)
    assert parsed.env == {"TZ": "Asia/Tokyo"} and parsed.inherited == {"TZ": "UTC", "PATH": "/bin"}
    for inherited, says in [
        ({"SECRET": "x"}, "the field 'inherited' holds 'SECRET': only PATH, LANG, LC_ALL, TZ"),
        ({"PATH": 1}, "the field 'inherited' must be a JSON object of strings"),
        (["PATH"], "the field 'inherited' must be a JSON object of strings"),
    ]:
        with pytest.raises(DynodError, match=says):
            RunRequest.from_body("a", {"inherited": inherited})
