"""The API client's paths (dynod/api/client.py). No root needed."""

from __future__ import annotations

from dynod.api.client import api_path


def test_api_paths_quote_each_segment_whole() -> None:
    assert api_path("spaces") == "/v1/spaces"
    assert (
        api_path("spaces", "acme", "trusted-ips", "10.0.0.0/8")
        == "/v1/spaces/acme/trusted-ips/10.0.0.0%2F8"
    )
    assert api_path("dynos", app="sushi", x=None) == "/v1/dynos?app=sushi"
