"""`ordergraph serve --demo` (what `./scripts/start` runs) as a person runs it: a real process
on loopback ports, stopped with Ctrl-C (SIGINT).

Two demos side by side, a taken port, and the state that outlives a restart: the token key
(tokens minted with the command the banner prints still work after a restart) and `--reset`.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

START_SECONDS = 60.0
PRODUCTS = "{ products(first: 10) { edges { node { sku } } } }"
CART = "{ cart { itemCount } }"
ADD = 'mutation { addToCart(productId: "%s", quantity: 1) { userErrors { code message } } }'


def _environment() -> dict[str, str]:
    """A person's shell: nothing of the test's own settings."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DATABASE_", "STRIPE_", "SMTP_", "JWT_", "EVENTS_"))
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve_demo_command(port: int, state: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ordergraph.cli",
        "serve",
        "--demo",
        "--port",
        str(port),
        "--state-dir",
        str(state),
        *extra,
    ]


class Demo:
    """A running `serve --demo`; `banner` is its stdout up to the end of the banner."""

    def __init__(self, port: int, state: Path, log: Path, *extra: str) -> None:
        self.port = port
        self.stderr_file = log.open("w+")
        self.process = subprocess.Popen(
            serve_demo_command(port, state, *extra),
            stdout=subprocess.PIPE,
            stderr=self.stderr_file,
            text=True,
            env=_environment(),
        )
        self.lines: list[str] = []
        self._banner_done = threading.Event()
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.lines.append(line)
            if "Stop with Ctrl-C." in line:
                self._banner_done.set()
        self._banner_done.set()

    def wait_for_banner(self) -> str:
        assert self._banner_done.wait(START_SECONDS), "no banner: " + self.stderr()
        banner = "".join(self.lines)
        assert "Stop with Ctrl-C." in banner, banner + self.stderr()
        return banner

    def field(self, pattern: str) -> str:
        found = re.search(pattern, "".join(self.lines), re.MULTILINE)
        assert found, "".join(self.lines)
        return found.group(1)

    @property
    def url(self) -> str:
        return self.field(r"GraphQL \(GraphiQL in a browser\): (\S+)/graphql")

    def stderr(self) -> str:
        self.stderr_file.flush()
        self.stderr_file.seek(0)
        return self.stderr_file.read()

    def stop(self) -> int:
        """Ctrl-C, as a person stops it; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(15)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.stderr_file.close()


@contextmanager
def demos(tmp_path: Path, *specs: tuple[int, Path, tuple[str, ...]]) -> Iterator[list[Demo]]:
    """Start every demo at once, wait for each banner; on leaving, Ctrl-C each and check that
    it stopped cleanly."""
    started = [
        Demo(port, state, tmp_path / f"stderr-{i}-{time.monotonic_ns()}.log", *extra)
        for i, (port, state, extra) in enumerate(specs)
    ]
    try:
        for demo in started:
            demo.wait_for_banner()
        yield started
    finally:
        results = [(demo.stop(), demo) for demo in started]
    for status, demo in results:
        log = Path(demo.stderr_file.name).read_text()
        assert status == 0, log
        assert "Traceback" not in log, log


def gql(url: str, query: str, token: str) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/graphql",
        json={"query": query},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def buy_and_pay(demo: Demo) -> None:
    """One purchase through the demo's own emulator; the receipt comes out of its mail sink."""
    token = demo.field(r"Shopper token: (\S+)")
    emulator = demo.field(r"Stripe emulator: +(\S+)")
    products = gql(demo.url, "{ products(first: 1) { edges { node { id } } } }", token)
    product = products["data"]["products"]["edges"][0]["node"]["id"]
    added = gql(demo.url, ADD % product, token)
    assert added["data"]["addToCart"]["userErrors"] == [], added
    checkout = gql(demo.url, "mutation { checkout { orderId userErrors { code } } }", token)
    order = checkout["data"]["checkout"]["orderId"]
    sessions = httpx.get(f"{emulator}/_emulator/checkout/sessions", timeout=10).json()["data"]
    (session,) = [s for s in sessions if s["client_reference_id"] == order]
    paid = httpx.post(f"{emulator}/_emulator/checkout/sessions/{session['id']}/complete")
    assert paid.json()["webhook_status"] == 200, paid.text
    status = gql(demo.url, '{ order(id: "%s") { status paymentStatus } }' % order, token)
    assert status["data"]["order"] == {"status": "PAYMENT_CONFIRMED", "paymentStatus": "PAID"}
    deadline = time.monotonic() + 10
    while f"Your receipt for order {order[:8]}" not in "".join(demo.lines):
        assert time.monotonic() < deadline, "".join(demo.lines)
        time.sleep(0.05)


def test_two_demos_at_once_both_answer_and_sell(tmp_path: Path) -> None:
    first, second = free_port(), free_port()
    with demos(tmp_path, (first, tmp_path / "one", ()), (second, tmp_path / "two", ())) as (
        one,
        two,
    ):
        for demo in (one, two):
            assert httpx.get(f"{demo.url}/healthz", timeout=10).status_code == 200
            body = gql(demo.url, PRODUCTS, demo.field(r"Shopper token: (\S+)"))
            assert "errors" not in body, body
            assert len(body["data"]["products"]["edges"]) == 5
            buy_and_pay(demo)
        # Each has its own emulator and mail sink: the second found the usual ports taken.
        for pattern in (r"Stripe emulator: +(\S+)", r"Mail sink \(SMTP\): +(\S+)"):
            assert one.field(pattern) != two.field(pattern)
        assert one.field(r"State \(database, JWT secret\): +(\S+)") == str(tmp_path / "one")


@pytest.mark.parametrize("option", ["--port", "--emulator-port", "--smtp-port"])
def test_a_taken_port_is_one_line_and_a_non_zero_exit(tmp_path: Path, option: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        port = busy if option == "--port" else free_port()
        extra = () if option == "--port" else (option, str(busy))
        done = subprocess.run(
            serve_demo_command(port, tmp_path / "state", *extra),
            capture_output=True,
            text=True,
            timeout=60,
            env=_environment(),
        )
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"port {busy} on 127.0.0.1" in lines[0] and "in use" in lines[0], lines[0]
    assert option in lines[0]
    assert "Traceback" not in done.stderr
    assert "ordergraph demo" not in done.stdout
    if option == "--port":  # the state of whatever holds the port is not touched
        assert not (tmp_path / "state").exists()


def test_tokens_survive_a_restart_and_reset_forgets_them(tmp_path: Path) -> None:
    port, state = free_port(), tmp_path / "state"
    with demos(tmp_path, (port, state, ())) as (demo,):
        command = demo.field(r"Mint a token: +(.+)$")
        shopper = demo.field(r"Shopper token: (\S+)")
        minted = subprocess.run(
            ["bash", "-c", command.strip()],
            capture_output=True,
            text=True,
            timeout=60,
            env=_environment(),
        )
        assert minted.returncode == 0, minted.stderr
        alice = minted.stdout.strip()
        assert "errors" not in gql(demo.url, CART, alice)
        # A second demo on the same state, on another port, is refused in one line.
        other = subprocess.run(
            serve_demo_command(free_port(), state),
            capture_output=True,
            text=True,
            timeout=60,
            env=_environment(),
        )
        assert other.returncode == 1, other.stdout + other.stderr
        assert other.stderr.strip().splitlines() == [
            f"ordergraph: {state} is in use by another demo (pid {demo.process.pid}): stop it, "
            "or give this one another --state-dir"
        ]
    assert (state / "jwt-secret").exists() and (state / "demo.sqlite3").exists()

    with demos(tmp_path, (port, state, ())) as (again,):
        for token in (alice, shopper):
            body = gql(again.url, CART, token)
            assert "errors" not in body, body
        assert again.field(r"Mint a token: +(.+)$") == command

    with demos(tmp_path, (port, state, ("--reset",))) as (fresh,):
        body = gql(fresh.url, CART, alice)
        assert body.get("errors"), body
        assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", body
        assert fresh.field(r"Mint a token: +(.+)$") != command
