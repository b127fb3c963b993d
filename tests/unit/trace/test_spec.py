"""FROM, TO, the protocol and the port as the CLI and the API take them."""

from __future__ import annotations

import pytest

from dynod.errors import DynodError
from dynod.trace.spec import TraceRequest, parse_words, with_app


def test_the_optional_words() -> None:
    assert parse_words(()) == ("tcp", None)
    assert parse_words(("8080",)) == ("tcp", 8080)  # a lone number is a TCP port
    assert parse_words(("UDP", "53")) == ("udp", 53)
    assert parse_words(("icmp",)) == ("icmp", None)


@pytest.mark.parametrize(
    ("words", "problem"),
    [
        (("sctp",), "unknown protocol 'sctp'"),
        (("icmp", "80"), "icmp has no ports"),
        (("tcp", "0"), "no such port: 0"),
        (("tcp", "http"), "not a port: 'http'"),
        (("tcp", "80", "x"), "too many words"),
    ],
)
def test_bad_words(words: tuple[str, ...], problem: str) -> None:
    with pytest.raises(DynodError, match=problem):
        parse_words(words)


def test_app_given_once_for_both_ends() -> None:
    assert with_app("web.1", "sushi") == "sushi/web.1"
    assert with_app("tuna/web.1", "sushi") == "tuna/web.1"
    assert with_app("host", "sushi") == "host"
    assert with_app("172.16.0.6", "sushi") == "172.16.0.6"
    assert with_app("web.1", None) == "web.1"


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("web.1", "names a dyno but not its app"),
        ("sushi/web", "invalid dyno name"),
        ("Sushi!/web.1", "invalid app name"),
        ("somewhere", "is not a place to trace"),
        ("300.1.1.1", "is not a place to trace"),
    ],
)
def test_bad_ends(source: str, problem: str) -> None:
    with pytest.raises(DynodError, match=problem):
        TraceRequest.checked(source, "host", "tcp", 53, 1.0)


def test_the_body_round_trip_and_its_checks() -> None:
    request = TraceRequest.checked("sushi/web.1", "router", "tcp", None, 2.5)
    assert TraceRequest.from_body(request.to_body()) == request
    assert TraceRequest.from_body({"from": "host", "to": "10.1.0.6"}).protocol == "tcp"
    for body, problem in [
        ({"from": "host"}, "'to' must be a string"),
        ({"from": "host", "to": "router", "port": "80"}, "'port' must be a port number"),
        ({"from": "host", "to": "router", "port": True}, "'port' must be a port number"),
        ({"from": "host", "to": "router", "wait": 0}, "cannot wait 0.0 seconds"),
        ({"from": "host", "to": "router", "wait": "1"}, "'wait' must be a number"),
        ({"from": "host", "to": "router", "via": "x"}, "unknown field 'via'"),
    ]:
        with pytest.raises(DynodError, match=problem):
            TraceRequest.from_body(body)
