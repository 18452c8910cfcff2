"""Start and stop a moto server subprocess on a free 127.0.0.1 port."""

from __future__ import annotations

import os
import socket
import sys
import urllib.request

from s3lake_testbed.process import LoopbackProcess

DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer(LoopbackProcess):
    """A moto server in its own process: ``with MotoServer() as url: ...``.

    ``strict`` (the default) adds the S3 behaviours moto lacks (:mod:`s3lake_testbed.strict_s3`);
    ``strict=False`` is plain moto. ``environ()`` gives the variables that point boto3 (and the AWS
    CLI) at it.
    """

    name = "moto server"

    def __init__(self, port: int | None = None, log_path: str | None = None, *, strict: bool = True) -> None:
        self.port = port or free_port()
        self.strict = strict
        if not strict:
            self.name = "plain moto server"
        super().__init__(f"http://127.0.0.1:{self.port}", log_path)

    def environ(self) -> dict[str, str]:
        env = dict(DUMMY_CREDENTIALS)
        env["AWS_ENDPOINT_URL"] = self.url
        return env

    def start(self) -> str:
        env = dict(os.environ)
        env.update(DUMMY_CREDENTIALS)
        env.pop("AWS_ENDPOINT_URL", None)
        command = [sys.executable, "-m", "s3lake_testbed.moto_server", "-H", "127.0.0.1", "-p", str(self.port)]
        if self.strict:
            command.append("--strict")
        return self._launch(command, env, lambda: urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1).read(),
                            timeout=60)
