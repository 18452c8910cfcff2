"""A canned-answer S3 endpoint: the answers copy in place needs, from memory, at the least cost per request.

Not an emulator: every object exists, is 1 KiB, SSE-S3, unreplicated, and every bucket has ACLs disabled
(BucketOwnerEnforced); a copy answers a fresh ETag. What it costs to answer is measured on its own
(its process's CPU), so a benchmark can show the client's CPU per object, which moto's own speed would
hide. ``python -m bench.canned_s3 --port N`` (several processes can share the port: SO_REUSEPORT).
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LAST_MODIFIED = "Tue, 01 Sep 2026 00:00:00 GMT"
OWNERSHIP = (b'<?xml version="1.0" encoding="UTF-8"?><OwnershipControls><Rule><ObjectOwnership>BucketOwnerEnforced'
             b"</ObjectOwnership></Rule></OwnershipControls>")


def etag(path: str) -> str:
    return '"' + hashlib.md5(path.encode()).hexdigest() + '"'  # noqa: S324 - a canned ETag


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def _send(self, status: int, headers: dict, body: bytes = b"", head: bool = False) -> None:
        self.send_response_only(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("x-amz-request-id", "CANNED")
        self.send_header("Content-Length", str(len(body) if not head else headers.get("Content-Length", 0)))
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _drain(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path.count("/") < 2:
            self._send(200, {"x-amz-bucket-region": "us-east-1"}, head=True)
            return
        self.send_response_only(200)
        for name, value in {"ETag": etag(path), "Last-Modified": LAST_MODIFIED, "Content-Type": "application/json",
                            "x-amz-server-side-encryption": "AES256", "Accept-Ranges": "bytes"}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "1024")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        if "ownershipControls" in self.path:
            self._send(200, {"Content-Type": "application/xml", "x-amz-bucket-region": "us-east-1"}, OWNERSHIP)
            return
        self._send(501, {"Content-Type": "application/xml"}, b"<Error><Code>NotImplemented</Code></Error>")

    def do_PUT(self) -> None:  # noqa: N802
        self._drain()
        if self.headers.get("x-amz-copy-source"):
            body = (f'<?xml version="1.0" encoding="UTF-8"?><CopyObjectResult><ETag>{etag(self.path)}</ETag>'
                    "<LastModified>2026-12-01T00:00:00.000Z</LastModified></CopyObjectResult>").encode()
            self._send(200, {"Content-Type": "application/xml"}, body)
            return
        self._send(200, {"ETag": etag(self.path)})

    def do_POST(self) -> None:  # noqa: N802
        self._drain()
        self._send(501, {"Content-Type": "application/xml"}, b"<Error><Code>NotImplemented</Code></Error>")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    server = Server(("127.0.0.1", args.port), Handler)
    print("ready", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
