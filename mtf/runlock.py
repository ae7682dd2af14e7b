"""One run per MODEL_DIR: `MODEL_DIR/run.lock` names the host and process that own it.

Two runs writing checkpoints into one directory corrupt each other's resume state, and on
a pod the second is usually a forgotten earlier launch. The lock is written by process 0,
refreshed at most once a minute while the run goes on, and removed when it ends. A second
run refuses, naming the owner, unless the owner is gone: on the same host its process no
longer exists; from another host, its heartbeat is older than `STALE_AFTER_SECONDS`
(a killed VM cannot remove its lock). Between checking and writing there is a window of
about a second in which two runs started together could both take it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

from mtf import storage
from mtf.errors import UserError

STALE_AFTER_SECONDS = 15 * 60
REFRESH_SECONDS = 60


class RunLockError(UserError):
    """Another live run owns MODEL_DIR."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, model_dir: str, now=time.time):
        self.path = storage.join(model_dir, "run.lock")
        self.now = now
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}
        self.last_refresh = 0.0

    def acquire(self) -> None:
        if storage.exists(self.path):
            try:
                held = json.loads(storage.read_bytes(self.path))
            except ValueError:
                held = {}
            self._check(held)
        self.refresh(force=True)

    def _check(self, held: dict) -> None:
        host, pid = held.get("host"), held.get("pid")
        age = self.now() - float(held.get("heartbeat", 0))
        if host == self.owner["host"] and isinstance(pid, int):
            if pid != self.owner["pid"] and _alive(pid):
                raise RunLockError(
                    f"MODEL_DIR is in use by process {pid} on this host ({host}), started "
                    f"{held.get('started', '?')}; stop it first (kill -TERM {pid} saves a "
                    f"checkpoint), or use another MODEL_DIR. Lock: {self.path}")
            return
        if host and age < STALE_AFTER_SECONDS:
            raise RunLockError(
                f"MODEL_DIR is in use by process {pid} on host {host} (heartbeat "
                f"{age:.0f} s ago, started {held.get('started', '?')}); stop that run first, "
                f"or use another MODEL_DIR. If that host is gone, delete {self.path} or wait "
                f"{(STALE_AFTER_SECONDS - age) / 60:.0f} min for its lock to go stale")
        if host:
            logging.warning("taking over %s from process %s on %s (no heartbeat for %.0f s)",
                            self.path, pid, host, age)

    def refresh(self, force: bool = False) -> None:
        now = self.now()
        if not force and now - self.last_refresh < REFRESH_SECONDS:
            return
        if not self.last_refresh:
            self.owner["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        storage.write_text(self.path, json.dumps({**self.owner, "heartbeat": now}))
        self.last_refresh = now

    def release(self) -> None:
        try:
            held = json.loads(storage.read_bytes(self.path))
            if held.get("host") == self.owner["host"] and held.get("pid") == self.owner["pid"]:
                storage.path(self.path).unlink()
        except (OSError, ValueError):
            logging.warning("could not remove %s; the next run will see it is stale",
                            self.path)
