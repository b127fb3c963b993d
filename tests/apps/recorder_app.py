"""A web dyno that prints every byte it receives (as Python bytes literals, one line per read)
and answers each request head it sees with 200 "ok": tests check through its output what the
router sent to the dyno. Keep-alive: a connection serves as many heads as arrive on it."""

import os
import socket
import threading


def serve(conn: socket.socket) -> None:
    buffered = b""
    with conn:
        while True:
            data = conn.recv(65536)
            print(f"recv {data!r}", flush=True)
            if not data:
                return
            buffered += data
            while b"\r\n\r\n" in buffered:
                _head, buffered = buffered.split(b"\r\n\r\n", 1)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def main() -> None:
    server = socket.create_server(("0.0.0.0", int(os.environ["PORT"])))
    print("listening on", server.getsockname(), flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


main()
