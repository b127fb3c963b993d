"""A web dyno that answers every request with FLOOD_BYTES (default 64 MiB) of "x" as fast as
the connection takes them, with a Content-Length: the router must not buffer it for a client
that does not read."""

import os
import socket
import threading

SIZE = int(os.environ.get("FLOOD_BYTES", str(64 << 20)))


def serve(conn: socket.socket) -> None:
    with conn:
        buffered = b""
        while b"\r\n\r\n" not in buffered:
            data = conn.recv(65536)
            if not data:
                return
            buffered += data
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % SIZE)
        block = b"x" * 65536
        sent = 0
        try:
            while sent < SIZE:
                conn.sendall(block)
                sent += len(block)
        except OSError:
            return


def main() -> None:
    server = socket.create_server(("0.0.0.0", int(os.environ["PORT"])))
    print("listening on", server.getsockname(), flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


main()
