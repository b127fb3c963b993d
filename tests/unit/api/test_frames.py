"""The attach connection's frames (api/frames.py): what is sent is what is read, whole or in
pieces, and what is malformed ends the connection."""

from __future__ import annotations

import pytest

from dynod.api import frames


def test_frames_sent_together_are_read_back_in_order() -> None:
    wire = (
        frames.encode(frames.STDIN, b"ls\n")
        + frames.resize(24, 80)
        + frames.encode(frames.EOF)
        + frames.exit_status(130)
    )
    got = frames.Decoder().feed(wire)
    assert [f.kind for f in got] == [frames.STDIN, frames.RESIZE, frames.EOF, frames.EXIT]
    assert got[0].payload == b"ls\n" and got[2].payload == b""
    assert frames.window(got[1]) == (24, 80)
    assert frames.status_of(got[3]) == 130


def test_a_frame_arriving_a_byte_at_a_time_is_read_once_whole() -> None:
    wire = frames.encode(frames.STDOUT, b"hello")
    decoder = frames.Decoder()
    seen = [f for byte in wire for f in decoder.feed(bytes([byte]))]
    assert seen == [frames.Frame(frames.STDOUT, b"hello")]
    assert decoder.pending == 0


def test_long_output_is_split_into_frames_of_at_most_the_maximum() -> None:
    blob = bytes(range(256)) * 1000  # 256 000 bytes
    wire = frames.data(frames.STDERR, blob)
    got = frames.Decoder().feed(wire)
    assert all(len(f.payload) <= frames.MAX_PAYLOAD for f in got) and len(got) == 4
    assert b"".join(f.payload for f in got) == blob
    assert frames.data(frames.STDOUT, b"") == b""


def test_an_unknown_exit_status_travels_as_none() -> None:
    (frame,) = frames.Decoder().feed(frames.exit_status(None))
    assert frames.status_of(frame) is None


def test_window_sizes_are_clamped_to_16_bits() -> None:
    (frame,) = frames.Decoder().feed(frames.resize(-5, 1 << 20))
    assert frames.window(frame) == (0, 0xFFFF)


@pytest.mark.parametrize(
    "wire",
    [
        b"z\x00\x00\x00\x00",  # an unknown kind
        b"o" + (frames.MAX_PAYLOAD + 1).to_bytes(4, "big"),  # too long: refused before it comes
    ],
)
def test_a_malformed_frame_is_refused(wire: bytes) -> None:
    with pytest.raises(frames.BadFrame):
        frames.Decoder().feed(wire)


def test_a_resize_or_exit_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(frames.BadFrame):
        frames.window(frames.Frame(frames.RESIZE, b"\x00\x18"))
    with pytest.raises(frames.BadFrame):
        frames.status_of(frames.Frame(frames.EXIT, b""))


def test_nothing_unknown_or_too_long_is_encoded() -> None:
    with pytest.raises(frames.BadFrame):
        frames.encode(b"q", b"")
    with pytest.raises(frames.BadFrame):
        frames.encode(frames.STDIN, b"x" * (frames.MAX_PAYLOAD + 1))
