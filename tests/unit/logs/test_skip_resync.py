"""After a skip-ahead the reader drops the rest of the line it landed in: output that has no
newlines at all must still come through, in MAX_LINE pieces, once that much was dropped."""

from __future__ import annotations

from pathlib import Path

from dynod.logs.book import MAX_LINE, LogBook, OutputFile


def test_output_without_newlines_comes_back_after_a_skip(tmp_path: Path) -> None:
    path = tmp_path / "dyno.out"
    reader = OutputFile(str(path), 0, window=1 << 20)
    with open(path, "ab", buffering=0) as dyno:
        dyno.write(b"x" * (3 << 20))  # a burst past the window, no newline anywhere
        reader.read_lines()
        assert reader.skipped >= 2 << 20
        for i in range(30):
            dyno.write(b"%09999d" % i)  # 10,000 bytes each, still no newline
    lines: list[str] = []
    for _ in range(20):
        lines += reader.read_lines()
    assert len(lines) >= 25, len(lines)
    assert all(len(line) == MAX_LINE for line in lines)


def test_a_line_about_a_dyno_carries_its_name(tmp_path: Path) -> None:
    book = LogBook(None, echo=None)
    line = book.emit("sushi", "heroku[logplex]", "Error L10 (output buffer overflow): 1", "web.1")
    assert line.dyno == "web.1" and str(line).endswith(
        "heroku[logplex]: Error L10 (output buffer overflow): 1"
    )
    assert book.emit("sushi", "app[web.1]", "hi").dyno is None
