"""The one check of an http(s) base URL and of a loopback host, for every caller.

Vendor endpoints in a policy, token profiles' and connection profiles' base URLs, the token
helper's listen address and ``KEYCOURIER_HELPER_URL`` all ask the same two questions; one
answer keeps them from drifting apart (``127.0.0.2`` is loopback everywhere, ``LOCALHOST``
too). Standard library only, and cheap to import: it is on the ``token`` path.
"""

from __future__ import annotations

import ipaddress
from typing import Final
from urllib.parse import urlsplit

MAX_URL_CHARS: Final = 512


def is_loopback_host(host: str | None) -> bool:
    """``localhost`` (any case) or an address in 127.0.0.0/8 or ::1."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url_problem(url: str) -> str | None:
    """Why ``url`` is not an acceptable base URL, or None: an http(s) URL with a host and a
    valid port, no credentials, query or fragment, no control or space characters, at most
    512 characters; plain http only to a loopback host."""
    if len(url) > MAX_URL_CHARS or any(ord(c) < 0x21 or 0x7F <= ord(c) < 0xA0 for c in url):
        return "is not a valid URL"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError:
        return "is not a valid URL"
    del port
    if parts.scheme not in ("https", "http"):
        return "must be an http(s) URL"
    if parts.username or parts.password:
        return "must not contain credentials"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    if not parts.hostname:
        return "has no host"
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        return "must use https (plain http is allowed only for a loopback host)"
    return None
