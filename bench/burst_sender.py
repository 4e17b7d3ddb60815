"""Send one image N times at once, each on its own connection, and print the statuses as JSON: a burst from a
process of its own, with the request bytes made in advance, so that sending it costs the measuring process nothing.

    python -m bench.burst_sender PORT COUNT < image.png
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import sys


def main() -> None:
    port, count, body = int(sys.argv[1]), int(sys.argv[2]), sys.stdin.buffer.read()
    head = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: %d\r\n" % len(body)
    request = head + b"Connection: close\r\n\r\n" + body

    def send(_: int) -> int:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
            connection.sendall(request)
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        return int(answer.split(b" ", 2)[1])

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        print(json.dumps(list(pool.map(send, range(count)))))


if __name__ == "__main__":
    main()
