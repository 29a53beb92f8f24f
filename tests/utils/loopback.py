"""The tests' network guard: tests and benchmarks send traffic to loopback only (127.0.0.0/8, ::1).

`install()` adds an audit hook (`sys.addaudithook`, once per interpreter) that refuses, before the
system call, every connect or UDP send to an address outside loopback and every lookup of a name
through the system's resolver (a test resolves names through the code's own injectable resolver):
it raises `NonLoopbackConnect` and records the attempt, in memory and, when a log file is named
(argument, or ORDERGRAPH_TEST_CONNECT_LOG), as a line there. The tests' own subprocesses install the
same hook at start-up (loopback_site/sitecustomize.py, put on their PYTHONPATH by conftest.py) and
write to the same file, so `violations()` sees theirs too. AF_UNIX sockets are not concerned.

uvloop (which `ordergraph serve` runs on, through uvicorn) connects and resolves in libuv, where no
audit event fires: its Python-level entry points are checked instead (`_guard_uvloop`).
"""

from __future__ import annotations

import errno
import importlib.abc
import importlib.machinery
import ipaddress
import os
import socket
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from types import FrameType, ModuleType
from typing import Any

# sitecustomize.py loads this file under this name at a subprocess's start-up (it cannot import
# `tests.utils`); a later `import tests.utils.loopback` in that interpreter must then be that same
# module (one hook, one record, one exception class), not a second copy.
SHARED_NAME = "_ordergraph_loopback_guard"
if __name__ != SHARED_NAME and isinstance(sys.modules.get(SHARED_NAME), ModuleType):
    sys.modules[__name__] = sys.modules[SHARED_NAME]

LOG_VARIABLE = "ORDERGRAPH_TEST_CONNECT_LOG"
SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loopback_site")
RULE = "tests may only connect to loopback addresses (127.0.0.0/8, ::1)"

_INET = (socket.AF_INET, socket.AF_INET6)
_violations: list[str] = []
_acknowledged: Counter[str] = Counter()
_log_path: str | None = None
_installed = False


class NonLoopbackConnect(ConnectionRefusedError):
    """A connection, UDP send or name lookup outside loopback, refused by the tests' guard before
    it happened."""


def install(log_path: str | None = None) -> None:
    """Guards this interpreter from now on (the hook is added once; a later call may only name
    another log file)."""
    global _installed, _log_path
    _log_path = log_path or os.environ.get(LOG_VARIABLE) or _log_path
    if _installed:
        return
    _installed = True
    sys.addaudithook(_audit)
    if isinstance(sys.modules.get("uvloop"), ModuleType):
        _guard_uvloop(sys.modules["uvloop"])
    else:
        sys.meta_path.insert(0, _UvloopFinder())


def subprocess_env(log_path: str, pythonpath: str | None = None) -> dict[str, str]:
    """What a subprocess's environment needs for it to guard itself and report here: this
    folder's sitecustomize first on PYTHONPATH (ahead of `pythonpath`), and the log file."""
    rest = [entry for entry in (pythonpath or "").split(os.pathsep) if entry and entry != SITE_DIR]
    return {"PYTHONPATH": os.pathsep.join([SITE_DIR, *rest]), LOG_VARIABLE: log_path}


def violations() -> list[str]:
    """The attempts refused so far: this process's, and those that other processes (the tests'
    subprocesses) wrote to the log file; without those that `expecting_violations` took."""
    lines = list(_violations)
    if _log_path:
        own = f"[pid {os.getpid()}]"  # this process's lines are in _violations already
        try:
            with open(_log_path, encoding="utf-8") as log:
                lines += [
                    line.rstrip("\n") for line in log if line.strip() and not line.startswith(own)
                ]
        except FileNotFoundError:
            pass
    pending = Counter(_acknowledged)
    found = []
    for line in lines:
        if pending[line]:
            pending[line] -= 1
        else:
            found.append(line)
    return found


@contextmanager
def expecting_violations() -> Iterator[list[str]]:
    """For a test that provokes refusals on purpose: on leaving, the list holds the refusals made
    inside the block (wait there for any subprocess to end), and they no longer count."""
    before = Counter(violations())
    caught: list[str] = []
    try:
        yield caught
    finally:
        new = Counter(violations()) - before
        caught.extend(new.elements())
        _acknowledged.update(new)


def may_connect(host: object) -> bool:
    """A loopback address (an IPv4-mapped IPv6 address by the address it maps), or localhost."""
    text = _text(host)
    if text is None:
        return False
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return _is_localhost(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def may_resolve(host: object) -> bool:
    """What the system's resolver may be asked: no host (listening on all addresses), localhost
    names and loopback or unspecified (0.0.0.0, ::) literals, none of which goes to a DNS server."""
    if host is None or may_connect(host):
        return True
    text = _text(host)
    try:
        return text is not None and ipaddress.ip_address(text).is_unspecified
    except ValueError:
        return False


def _text(host: object) -> str | None:
    if isinstance(host, bytes | bytearray):
        return bytes(host).decode("ascii", "replace")
    return host if isinstance(host, str) else None


def _is_localhost(name: str) -> bool:
    name = name.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not event.startswith("socket."):
        return
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        sock, address = args
        if address is not None and getattr(sock, "family", None) in _INET:
            _check_target(event[len("socket.") :], address)
    elif event == "socket.getaddrinfo":
        _check_lookup(args[0], args[1])
    elif event == "socket.gethostbyname":  # also gethostbyname_ex
        _check_lookup(args[0], None)


def _check_target(action: str, address: object) -> None:
    if not isinstance(address, Sequence) or isinstance(address, str | bytes) or not address:
        return  # not an INET address: the call itself fails
    host, port = address[0], address[1] if len(address) > 1 else "?"
    if not may_connect(host):
        _refuse(f"{action} to {_where(host, port)}: {RULE}")


def _check_lookup(host: object, port: object) -> None:
    if not may_resolve(host):
        _refuse(
            f"looking up {_where(host, port)} with the system's resolver: {RULE}, and resolve "
            "names through the code's own injectable resolver"
        )


def _where(host: object, port: object) -> str:
    text = _text(host)
    shown = repr(host) if text is None else f"[{text}]" if ":" in text else text
    return shown if port is None else f"{shown} port {port}"


def _refuse(message: str) -> None:
    command = " ".join(sys.argv)[:160]
    line = f"[pid {os.getpid()}] {message} (at {_caller(sys._getframe(1))}, in {command})"
    _violations.append(line)
    if _log_path:
        try:
            with open(_log_path, "a", encoding="utf-8") as log:
                log.write(line.replace("\n", " ") + "\n")
        except OSError:
            pass
    raise NonLoopbackConnect(errno.ECONNREFUSED, message)


def _caller(frame: FrameType | None) -> str:
    """The innermost frame outside the standard library, the installed packages and this file:
    the code that asked."""
    import sysconfig  # only now: every subprocess imports this module at start-up

    libraries = tuple(
        {sysconfig.get_path(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    )
    first = None
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename != __file__:
            first = first or frame
            if not filename.startswith(libraries) and not filename.startswith("<frozen"):
                break
        frame = frame.f_back
    frame = frame or first
    return "?" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno}"


class _UvloopFinder(importlib.abc.MetaPathFinder):
    """Guards uvloop as soon as something imports it."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != "uvloop":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        loader = spec.loader if spec is not None else None
        if loader is None:
            return None
        execute = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            _guard_uvloop(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _guard_uvloop(uvloop: ModuleType) -> None:
    """uvloop's loop connects, sends and resolves in libuv, without audit events: its methods that
    take a remote address check it first."""
    loop = uvloop.Loop
    if getattr(loop, "_loopback_guarded", False):
        return
    create_connection = loop.create_connection
    create_datagram_endpoint = loop.create_datagram_endpoint
    getaddrinfo = loop.getaddrinfo
    sock_connect = loop.sock_connect

    async def guarded_create_connection(
        self: Any, protocol_factory: Any, host: Any = None, port: Any = None, **kwargs: Any
    ) -> Any:
        if host is not None:
            _check_target("connect", (host, port))
        return await create_connection(self, protocol_factory, host, port, **kwargs)

    async def guarded_create_datagram_endpoint(
        self: Any, protocol_factory: Any, local_addr: Any = None, remote_addr: Any = None, **kw: Any
    ) -> Any:
        if remote_addr is not None:  # an AF_UNIX path is not checked
            _check_target("sendto", remote_addr)
        return await create_datagram_endpoint(self, protocol_factory, local_addr, remote_addr, **kw)

    async def guarded_getaddrinfo(self: Any, host: Any, port: Any, **kwargs: Any) -> Any:
        _check_lookup(host, port)
        return await getaddrinfo(self, host, port, **kwargs)

    async def guarded_sock_connect(self: Any, sock: socket.socket, address: Any) -> Any:
        if sock.family in _INET:
            _check_target("connect", address)
        return await sock_connect(self, sock, address)

    loop.create_connection = guarded_create_connection
    loop.create_datagram_endpoint = guarded_create_datagram_endpoint
    loop.getaddrinfo = guarded_getaddrinfo
    loop.sock_connect = guarded_sock_connect
    loop._loopback_guarded = True
