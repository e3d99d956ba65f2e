"""llama-server targets: parsing ``--target [name=]URL`` and knowing whether a target is local.

Example::

    >>> t = parse_target("gpu0=http://127.0.0.1:8081")
    >>> t.name, t.base_url, t.port
    ('gpu0', 'http://127.0.0.1:8081', 8081)
    >>> parse_target("http://localhost:8080/v1").base_url
    'http://localhost:8080'
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:@/-]{1,100}$")


class TargetSpecError(ValueError):
    """A ``--target`` value could not be understood; the message shows the expected form."""


@dataclass(frozen=True)
class Target:
    """One llama-server to scrape.

    ``query`` (e.g. ``model=qwen``) is appended to every request, which is how a router-mode
    llama-server is told which model to answer for (``autoload=false`` is added, so scraping one
    model never loads it; a target without ``?model=`` that is a router is read as all its models). ``local_addresses`` is the set of IPs of
    this machine the target's host resolves to (``None`` when the server is not on this
    machine): only local targets can have their GPU memory attributed.
    """

    name: str
    base_url: str
    query: str = ""
    port: int | None = None
    local_addresses: frozenset[str] | None = None

    def url(self, path: str) -> str:
        """Full URL of ``path`` on this target, with the target's query string."""
        return self.base_url + path + (f"?{self.query}" if self.query else "")


def _is_local_ip(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if addr.is_loopback:
        return True
    # An address is ours exactly when we can bind to it (no packets are sent).
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((ip, 0))
        return True
    except OSError:
        return False


def _local_addresses(host: str) -> frozenset[str] | None:
    if host == "localhost":
        return frozenset({"127.0.0.1", "::1"})
    try:
        ipaddress.ip_address(host)
        candidates = {host}
    except ValueError:
        try:  # resolved once at start-up, never at scrape time
            candidates = {str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
        except OSError:
            return None
    local = frozenset(ip for ip in candidates if _is_local_ip(ip))
    return local or None


def parse_target(spec: str) -> Target:
    """Parse ``URL`` or ``name=URL``. The default name is ``host:port``."""
    spec = spec.strip()
    name = ""
    if "=" in spec.split("://", 1)[0]:
        name, _, spec = spec.partition("=")
        name = name.strip()
        if not _NAME_RE.match(name):
            raise TargetSpecError(f"invalid target name {name!r}: use letters, digits and _.:@/- (e.g. --target gpu0=http://127.0.0.1:8080)")
    if "://" not in spec:
        if not re.search(r":\d+(/|\?|$)", spec):
            # "coder" would otherwise be read as http://coder:80, which is rarely what was meant.
            raise TargetSpecError(f"target {spec!r} is not a URL: write http://HOST:PORT (e.g. --target {name + '=' if name else ''}http://127.0.0.1:8080)")
        spec = "http://" + spec
    parts = urlsplit(spec)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetSpecError(f"invalid target URL {spec!r}: expected http://HOST:PORT (e.g. --target http://127.0.0.1:8080)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise TargetSpecError(f"invalid port in target URL {spec!r}: {exc}") from None
    host = parts.hostname
    netloc_host = f"[{host}]" if ":" in host else host
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        # The OpenAI-style base URL (how aider and Continue users write it, and LLAMA_SERVER_URL is
        # shared with the client, which accepts it too): llama-server's /metrics, /slots ... are at the root.
        path = path[: -len("/v1")]
    base = f"{parts.scheme}://{netloc_host}:{port}{path}"
    query = parts.query
    if "model" in parse_qs(query) and "autoload" not in parse_qs(query):
        # One model of a router: without autoload=false every scrape would load (or wake) it.
        query += "&autoload=false"
    return Target(
        name=name or f"{host}:{port}",
        base_url=base,
        query=query,
        port=port,
        local_addresses=_local_addresses(host),
    )


def parse_targets(specs: list[str]) -> list[Target]:
    """Parse several specs; names must be unique (they become the ``target`` label)."""
    targets = [parse_target(s) for s in specs]
    seen: set[str] = set()
    for t in targets:
        if t.name in seen:
            raise TargetSpecError(f"target name {t.name!r} is used twice; name them, e.g. --target a=URL --target b=URL")
        seen.add(t.name)
    return targets
