"""Network namespaces as "hosts" for the multi-host tests, and a TCP forwarder to reach loopback services.

Each host is a Linux network namespace joined to the root namespace by a veth pair on
a private subnet (10.213.x.0/24) that exists only between them. Services keep
listening on loopback; a forwarder in the root namespace, listening on the host's
gateway address only, carries its connections to them. Everything is removed at the
end, also on failure. Needs root: ``make_hosts`` skips with the reason elsewhere, and
fails under CI=true.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil
import pytest

from tests.conftest import IN_CI


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=10)


class Forwarder:
    """Accepts on ``listen`` and pipes every connection to ``target`` (threads; closed on ``close``)."""

    def __init__(self, listen: str, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server((listen, 0))
        self.port = self.server.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name=f"forward-{listen}").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._socks += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        try:
            while True:
                for key, _ in sel.select(timeout=1.0):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            a.close()
            b.close()

    def close(self) -> None:
        """Stop accepting and close every piped connection."""
        self._closed = True
        self.server.close()
        with self._lock:
            for s in self._socks:
                try:
                    s.close()
                except OSError:
                    pass


@dataclass
class Host:
    """One namespace, its link to the root namespace and its forwarder to PostgreSQL."""

    name: str
    ns: str
    root_if: str
    host_if: str
    gateway: str
    forwarders: dict[int, Forwarder] = field(default_factory=dict)  # loopback port -> its forwarder
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def forward(self, port: int) -> int:
        """Make loopback ``port`` reachable from the host at ``gateway``; the port to use there."""
        if port not in self.forwarders:
            self.forwarders[port] = Forwarder(self.gateway, ("127.0.0.1", port))
        return self.forwarders[port].port

    def cut(self) -> None:
        """Take the link down on both ends: the host's route to the database is gone."""
        _ip("link", "set", self.host_if, "down", ns=self.ns)
        _ip("link", "set", self.root_if, "down")

    def restore(self) -> None:
        """Bring the link back up."""
        _ip("link", "set", self.root_if, "up")
        _ip("link", "set", self.host_if, "up", ns=self.ns)


def _can_make_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns add)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` to create network namespaces"
    probe = f"sh-probe-{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"`ip netns add` failed here ({getattr(exc, 'stderr', '') or exc})"
    _ip("netns", "del", probe)
    return None


def _free_subnet_base() -> int:
    # third octet of 10.213.x.0/24: four consecutive subnets no route on this machine uses
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True, check=True).stdout
    for base in range(16, 240, 4):
        if not any(f"10.213.{base + k}." in routes for k in range(4)):
            return base
    raise AssertionError("no free 10.213.x.0/24 subnet for the test's hosts")


@contextmanager
def make_hosts(n: int) -> Iterator[list[Host]]:
    """``n`` namespaces with a veth link each; they, their links, forwarders and processes go at the end."""
    why = _can_make_namespaces()
    if why is not None:
        if IN_CI:
            pytest.fail(f"{why}; CI=true requires the multi-host test to run", pytrace=False)
        pytest.skip(why)
    tag = uuid.uuid4().hex[:5]
    base = _free_subnet_base()
    made: list[Host] = []
    try:
        for k in range(n):
            h = Host(
                f"host{k + 1}", f"sh-mh-{tag}-{k + 1}", f"shr{tag}{k + 1}", f"shh{tag}{k + 1}", f"10.213.{base + k}.1"
            )
            _ip("netns", "add", h.ns)
            made.append(h)
            _ip("link", "add", h.root_if, "type", "veth", "peer", "name", h.host_if)
            _ip("link", "set", h.host_if, "netns", h.ns)
            _ip("addr", "add", f"{h.gateway}/24", "dev", h.root_if)
            _ip("link", "set", h.root_if, "up")
            _ip("addr", "add", f"10.213.{base + k}.2/24", "dev", h.host_if, ns=h.ns)
            _ip("link", "set", h.host_if, "up", ns=h.ns)
            _ip("link", "set", "lo", "up", ns=h.ns)
        yield made
    finally:
        for h in made:
            for p in h.procs:
                kill_tree(p)
            for fw in h.forwarders.values():
                fw.close()
            subprocess.run(["ip", "link", "del", h.root_if], capture_output=True, timeout=10)  # takes its peer along
            subprocess.run(["ip", "netns", "del", h.ns], capture_output=True, timeout=10)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"sh-mh-{tag}" not in left, f"namespaces left behind: {left}"


def descendants(p: subprocess.Popen[str]) -> list[psutil.Process]:
    try:
        root = psutil.Process(p.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(p: subprocess.Popen[str]) -> None:
    for proc in descendants(p):
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        p.communicate(timeout=10)
    except (subprocess.TimeoutExpired, ValueError):
        pass
