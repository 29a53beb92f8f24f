"""Where `ordergraph serve --demo` keeps what outlives one run: its state directory.

By default `.ordergraph-demo/<port>` under the current directory (the checkout, for
`./scripts/start`), so that a demo restarted on its port finds its orders again, and two demos
on two ports never share a database. `--state-dir` chooses another. The directory holds:

- `demo.sqlite3`: the database (with SQLite's `-wal`/`-shm` files beside it);
- `jwt-secret`: the HS256 key of the demo's tokens, made on first start and then kept, so that
  tokens stay valid across restarts;
- `demo.env`: the settings of the running demo (`JWT_SECRET`, `DATABASE_URL`,
  `STRIPE_API_BASE`, ...), rewritten at each start, for other `ordergraph` verbs to use;
- `lock`: held while a demo runs, so that a second demo cannot use the same directory.

`--reset` deletes these files (and only these) before the demo starts.
"""

from __future__ import annotations

import os
import secrets
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

if sys.platform != "win32":
    import fcntl

DEFAULT_ROOT = Path(".ordergraph-demo")
DATABASE = "demo.sqlite3"
SECRET = "jwt-secret"
ENV_FILE = "demo.env"
LOCK = "lock"
# Everything `--reset` deletes: the files the demo makes, never anything else in the directory.
OWN_FILES = (
    DATABASE,
    f"{DATABASE}-wal",
    f"{DATABASE}-shm",
    f"{DATABASE}-journal",
    SECRET,
    ENV_FILE,
)


class DemoError(Exception):
    """The demo cannot start; the message is one line for the person who started it."""


def default_state_dir(port: int) -> Path:
    return DEFAULT_ROOT / str(port)


class DemoState:
    """An open state directory, locked for this process until `close`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock: TextIO | None = open(self.directory / LOCK, "a+")
        except OSError as exc:
            raise DemoError(f"cannot use {self.directory} as the demo's state: {exc}") from None
        self._take_lock()

    def _take_lock(self) -> None:
        assert self._lock is not None
        if sys.platform == "win32":  # no advisory locks: the service port keeps demos apart
            return
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "?"
            self.close()
            raise DemoError(
                f"{self.directory} is in use by another demo (pid {holder}): stop it, "
                "or give this one another --state-dir"
            ) from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"{os.getpid()}\n")
        self._lock.flush()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None

    def reset(self) -> None:
        """Forget the orders, products and tokens of earlier runs."""
        for name in OWN_FILES:
            (self.directory / name).unlink(missing_ok=True)

    @property
    def database_url(self) -> str:
        return f"sqlite://{self.directory / DATABASE}"

    def jwt_secret(self) -> str:
        """The demo's token key: read from `jwt-secret`, made there on first use."""
        path = self.directory / SECRET
        try:
            secret = path.read_text().strip()
        except FileNotFoundError:
            secret = ""
        if not secret:
            secret = "demo-" + secrets.token_hex(32)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(secret + "\n")
        return secret

    def write_env(self, values: Mapping[str, str]) -> Path:
        """`demo.env`: NAME=value lines a shell can source (`set -a; . demo.env; set +a`)."""
        path = self.directory / ENV_FILE
        lines = [
            "# The settings of the demo last started on this state, written by "
            "`ordergraph serve --demo`.",
            *(f"{name}={shlex.quote(value)}" for name, value in values.items()),
        ]
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write("\n".join(lines) + "\n")
        return path
