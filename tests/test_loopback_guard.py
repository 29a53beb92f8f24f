"""The tests' network guard (tests/utils/loopback.py) refuses what is outside loopback before it
happens, in this process and in those the tests start. Every address outside loopback here is in
TEST-NET-1 (192.0.2.0/24) or 2001:db8::/32, documentation ranges that are never routed, and no
attempt to reach one ever gets as far as the system call."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils import loopback

OUTSIDE = ("192.0.2.1", 9)


@pytest.fixture
def listener() -> Iterator[tuple[str, int]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[:2]


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`code` in a subprocess started as the tests start theirs (os.environ as conftest.py set
    it)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize(
    ("host", "connect", "resolve"),
    [
        ("127.0.0.1", True, True),
        ("127.8.9.10", True, True),
        ("::1", True, True),
        ("::ffff:127.0.0.1", True, True),
        (b"127.0.0.1", True, True),
        ("localhost", True, True),
        ("LOCALHOST.", True, True),
        ("shop.localhost", True, True),
        (None, False, True),
        ("0.0.0.0", False, True),
        ("::", False, True),
        ("192.0.2.1", False, False),
        ("::ffff:192.0.2.1", False, False),
        ("2001:db8::1", False, False),
        ("10.0.0.1", False, False),
        ("example.com", False, False),
        (b"example.com", False, False),
        ("localhost.example.com", False, False),
        ("", False, False),
    ],
)
def test_what_is_loopback(host: str | bytes | None, connect: bool, resolve: bool) -> None:
    assert loopback.may_connect(host) is connect
    assert loopback.may_resolve(host) is resolve


def test_connect_outside_loopback_is_refused_before_the_system_call(
    listener: tuple[str, int],
) -> None:
    with loopback.expecting_violations() as caught, socket.socket() as sock:
        sock.setblocking(False)
        # A real non-blocking connect would start (EINPROGRESS) or fail for want of a route.
        with pytest.raises(loopback.NonLoopbackConnect, match=r"192\.0\.2\.1 port 9.*loopback"):
            sock.connect(OUTSIDE)
        with pytest.raises(loopback.NonLoopbackConnect):
            sock.connect_ex(OUTSIDE)
        # ... and a socket that had started connecting could not connect anywhere else now.
        sock.setblocking(True)
        sock.connect(listener)
        assert sock.getpeername() == listener
    assert len(caught) == 2, caught
    assert all(line.startswith(f"[pid {os.getpid()}] connect to 192.0.2.1") for line in caught)
    assert __file__ in caught[0]
    assert not set(caught) & set(loopback.violations())


def test_the_refusal_is_a_refused_connection() -> None:
    with loopback.expecting_violations(), socket.socket() as sock:
        with pytest.raises(ConnectionRefusedError):
            sock.connect(OUTSIDE)


def test_ipv6_and_ipv4_mapped_outside_loopback_are_refused() -> None:
    try:
        sock = socket.socket(socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 here")
    with loopback.expecting_violations() as caught, sock:
        for address in ("2001:db8::1", "::ffff:192.0.2.1"):
            with pytest.raises(loopback.NonLoopbackConnect, match=r"\[.*\] port 9"):
                sock.connect((address, 9, 0, 0))
    assert len(caught) == 2, caught


def test_udp_outside_loopback_is_refused() -> None:
    with (
        loopback.expecting_violations() as caught,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(("127.0.0.1", 0))
        sender.sendto(b"here", receiver.getsockname())
        assert receiver.recv(10) == b"here"
        with pytest.raises(loopback.NonLoopbackConnect):
            sender.sendto(b"there", OUTSIDE)
        with pytest.raises(loopback.NonLoopbackConnect):
            sender.sendmsg([b"there"], [], 0, OUTSIDE)
    assert [line.split(" to ")[0] for line in caught] == [
        f"[pid {os.getpid()}] sendto",
        f"[pid {os.getpid()}] sendmsg",
    ]


def test_loopback_and_unix_sockets_are_let_through(
    listener: tuple[str, int], tmp_path: Path
) -> None:
    before = loopback.violations()
    with socket.create_connection(listener, timeout=5) as sock:
        assert sock.getpeername() == listener
    with socket.create_connection(("localhost", listener[1]), timeout=5):
        pass
    path = str(tmp_path / "sock")
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        server.bind(path)
        server.listen()
        client.connect(path)
    assert loopback.violations() == before


def test_names_are_not_resolved_by_the_system() -> None:
    with loopback.expecting_violations() as caught:
        for lookup in (
            lambda: socket.getaddrinfo("example.com", 443),
            lambda: socket.getaddrinfo(b"example.com", 443),
            lambda: socket.gethostbyname("example.com"),
            lambda: socket.create_connection(("example.com", 443)),
        ):
            with pytest.raises(loopback.NonLoopbackConnect, match=r"example\.com.*resolver"):
                lookup()
    assert len(caught) == 4, caught
    assert socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
    assert socket.getaddrinfo(None, 80, flags=socket.AI_PASSIVE)


async def test_asyncio_connections_outside_loopback_are_refused(
    listener: tuple[str, int],
) -> None:
    with loopback.expecting_violations() as caught:
        with pytest.raises(loopback.NonLoopbackConnect):
            await asyncio.open_connection(*OUTSIDE)
        with pytest.raises(loopback.NonLoopbackConnect):
            await asyncio.open_connection("example.com", 443)
    assert len(caught) == 2, caught
    _, writer = await asyncio.open_connection(*listener)
    writer.close()
    await writer.wait_closed()


def test_uvloop_connections_outside_loopback_are_refused(listener: tuple[str, int]) -> None:
    """uvloop (`ordergraph serve` runs on it) connects in libuv, where no audit event fires."""
    uvloop = pytest.importorskip("uvloop")

    async def attempts() -> None:
        loop = asyncio.get_running_loop()
        for attempt in (
            lambda: asyncio.open_connection(*OUTSIDE),
            lambda: asyncio.open_connection("example.com", 443),
            lambda: loop.getaddrinfo("example.com", 443),
            lambda: loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=OUTSIDE),
        ):
            with pytest.raises(loopback.NonLoopbackConnect):
                await attempt()
        _, writer = await asyncio.open_connection(*listener)
        writer.close()

    loop = uvloop.new_event_loop()
    try:
        with loopback.expecting_violations() as caught:
            loop.run_until_complete(attempts())
    finally:
        loop.close()
    assert len(caught) == 4, caught


@pytest.mark.parametrize(
    "code",
    [
        "import socket; socket.create_connection(('192.0.2.1', 9))",
        "import socket; socket.socket().connect(('192.0.2.1', 9))",
        "import asyncio, uvloop; uvloop.run(asyncio.open_connection('192.0.2.1', 9))",
    ],
)
def test_subprocesses_are_guarded_and_report_here(code: str) -> None:
    with loopback.expecting_violations() as caught:
        done = _python(code)
    assert done.returncode == 1, done
    assert "NonLoopbackConnect" in done.stderr and "192.0.2.1 port 9" in done.stderr, done.stderr
    assert len(caught) == 1, caught
    assert "192.0.2.1 port 9" in caught[0] and not caught[0].startswith(f"[pid {os.getpid()}]")
    log = Path(os.environ[loopback.LOG_VARIABLE]).read_text()
    assert caught[0] in log.splitlines()


def test_a_subprocess_on_loopback_reports_nothing(listener: tuple[str, int]) -> None:
    before = loopback.violations()
    done = _python(f"import socket; socket.create_connection({listener!r}).close()")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert loopback.violations() == before


def test_a_broken_guard_does_not_stop_a_subprocess(tmp_path: Path) -> None:
    """sitecustomize.py without its ../loopback.py: one line on stderr, and the program runs."""
    site = tmp_path / "loopback_site"
    site.mkdir()
    source = Path(loopback.SITE_DIR) / "sitecustomize.py"
    (site / "sitecustomize.py").write_text(source.read_text())
    done = _python("print('ran')", PYTHONPATH=str(site))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ran\n"
    assert "loopback guard is not installed" in done.stderr
