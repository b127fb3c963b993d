"""The renderers on a model (tests/unit/inspect/sample.py): each draws every bridge, every dyno
with its address, the sets, the DNS names and the differences, and the HTML page loads nothing."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from dynod.inspect import dot, html, text
from dynod.inspect.model import Dyno, Topology
from tests.unit.inspect.sample import topology


def _everything_shown(rendered: str, top: Topology) -> None:
    for bridge in top.bridges:
        assert bridge.name in rendered
        for address in bridge.addresses:
            assert address in rendered
    for dyno in top.dynos:
        assert dyno.label in rendered
        assert dyno.netns in rendered
        if dyno.address:
            assert dyno.address in rendered
    for problem in top.problems:
        assert problem.subject in rendered


def test_the_model_survives_json() -> None:
    top = topology()
    assert Topology.from_json(top.to_json()) == top


def test_text_draws_every_bridge_dyno_and_difference() -> None:
    top = topology()
    out = text.render(top)
    _everything_shown(out, top)
    assert "┌── bridge dynod0 #4 (Common Runtime, 172.16.0.0/12, masquerade)" in out
    assert "172.16.0.5/30 (sushi/web.1 gw)" in out
    assert "│ veth #7 ⇄ eth0 #2" in out
    assert "! veth dynod-3 MISSING" in out
    assert "! namespace MISSING" in out
    assert "NOT isolated" not in out  # the stray port's flags are not drawn as a dyno's
    assert "! port dynod-7 #11" in out
    assert "  ! stray element 10.1.0.66 . 9999: in set inet dynod web" in out
    assert "2 difference(s) between the state and the kernel:" in out
    assert "      web.api.app.localspace -> 10.1.0.6" in out


def test_text_box_edges_line_up() -> None:
    """Every line of a box is as wide as its top edge."""
    lines = text.box(["short", "a much longer line than the box is wide" * 2], 30, joint=15)
    assert {len(line) for line in lines} == {30}
    assert lines[0][15] == "┴"  # under a line drawn from above at column 15
    assert lines[2].endswith("… │")


def test_text_without_differences_says_so() -> None:
    top = topology()
    clean = Topology(top.prefix, top.scope, top.bridges, top.dynos, top.sets, top.dns, ())
    assert "no differences" in text.render(clean)


def _dot_nodes_and_edges(source: str) -> tuple[set[str], list[tuple[str, str]]]:
    nodes = set(re.findall(r'^\s+("[^"]+"|\w+) \[', source, re.M))
    edges = re.findall(r'^\s+("[^"]+") -- ("[^"]+")', source, re.M)
    return nodes, edges


def test_dot_is_one_graph_with_a_cluster_per_bridge_and_declared_ends() -> None:
    top = topology()
    source = dot.render(top)
    _everything_shown(source.replace("\\l", "\n"), top)
    assert source.startswith("graph ") and source.rstrip().endswith("}")
    assert source.count("{") == source.count("}")
    assert source.count('subgraph "cluster') == len(top.bridges)
    nodes, edges = _dot_nodes_and_edges(source)
    assert edges
    for a, b in edges:
        assert a in nodes and b in nodes, (a, b)
    assert '[style=dashed, color=red, label="veth dynod-3 MISSING"]' in source
    assert "problems [shape=note, color=red" in source


def test_dot_quotes_escape() -> None:
    assert dot.quote('say "hi" \\ now') == '"say \\"hi\\" \\\\ now"'
    assert dot.quote("a\nb") == '"a\\lb\\l"'


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_self_contained_and_shows_everything() -> None:
    top = topology()
    page = html.render(top)
    parsed = _Page()
    parsed.feed(page)
    shown = " ".join(parsed.text)
    _everything_shown(shown, top)
    assert parsed.tags.count("svg") == len(top.bridges)
    # nothing is fetched: no script, stylesheet link, image, frame, font or remote URL
    for tag in ("script", "link", "img", "iframe", "object", "embed"):
        assert tag not in parsed.tags
    for name, value in parsed.attrs:
        assert name not in ("src", "href") or (value or "").startswith("#"), (name, value)
    assert "@import" not in page and "url(" not in page
    # the SVG namespace (a name, never fetched) is the only URL
    assert "http://www.w3.org/2000/svg" in page
    assert not re.findall(r"https?://", page.replace('xmlns="http://www.w3.org/2000/svg"', ""))


def test_html_escapes_what_it_shows() -> None:
    top = topology()
    odd = Dyno(**(top.dynos[0].__dict__ | {"app": "<b>x</b>", "netns": "a&b"}))
    page = html.render(Topology(top.prefix, top.scope, top.bridges, (odd,), (), {}, ()))
    assert "<b>x</b>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;/web.1" in page
    assert "a&amp;b" in page
