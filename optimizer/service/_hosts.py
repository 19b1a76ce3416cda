"""Which names the service answers to: loopback, plus those allowed by configuration.

A service without a token is safe only if no web page can reach it. Browsers keep
pages from reading other origins, but DNS rebinding points a name the attacker owns
(``attacker.example``) at 127.0.0.1, and the browser then sends the page's requests
to the service with ``Host: attacker.example``; and a page on any origin may send a
"simple" cross-origin POST, with its ``Origin`` header. So the gate (``_http.py``)
answers only requests whose Host names this machine's loopback (or a name given with
``--allow-host``), and refuses browser requests whose Origin is not such a name.

Light on purpose (no FastAPI): the command line imports :func:`is_loopback` from here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
ANY_HOST = "*"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine's loopback."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything


def host_name(authority: str) -> str:
    """The name in a Host header (``name``, ``name:port``, ``[::1]:port``), lower-case, without port or final dot."""
    authority = authority.strip().lower()
    if authority.startswith("["):  # an IPv6 literal
        return authority[1:].partition("]")[0]
    if authority.count(":") > 1:  # a bare IPv6 address (as given to --allow-host)
        return authority
    name, _, port = authority.rpartition(":")
    if name and port.isdigit():
        authority = name
    return authority.rstrip(".")


def origin_name(origin: str) -> str | None:
    """The host name of an Origin header (``scheme://host[:port]``); None for ``null`` or garbage."""
    try:
        name = urlsplit(origin.strip()).hostname
    except ValueError:
        return None
    return name.rstrip(".") if name else None


class AllowedHosts:
    """Loopback names plus ``extra`` (``"*"`` in ``extra``: any name).

    Args:
        extra: further host names, as clients spell them (``studies.example.com``).
        any_host: accept every name (a service with a token: the token is what protects it).
    """

    def __init__(self, extra: Iterable[str] = (), *, any_host: bool = False) -> None:
        names = [host_name(h) for h in extra]
        self.any = any_host or ANY_HOST in names
        self.extra = tuple(sorted({n for n in names if n and n != ANY_HOST and not is_loopback(n)}))

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return self.any or is_loopback(name) or name in self.extra

    def describe(self) -> str:
        """The allowed names, for an error message."""
        return ", ".join(("localhost", "127.0.0.1", "[::1]", *self.extra))
