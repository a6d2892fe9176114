"""Which addresses the server may fetch from or post to on a user's say-so.

Calendar links (CalDAV, ICS) and webhooks make this server send requests to addresses a user
typed. On a shared server that must not reach its own network: loopback, private ranges,
link-local (cloud metadata at 169.254.169.254), multicast. FRONTDESK_ALLOW_PRIVATE_URLS lifts
the rule for a self-hosted install whose calendar server or automation lives on the LAN.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from booking.errors import InvalidRequest


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


async def check_public_url(url: str, *, allow_private: bool) -> None:
    """Refuse a URL whose host is, or resolves to, a non-public address."""
    if allow_private:
        return
    host = urlsplit(url).hostname
    if not host:
        raise InvalidRequest("the address needs a host name")
    try:
        infos = await asyncio.to_thread(socket.getaddrinfo, host, None)
    except OSError:
        raise InvalidRequest(f"{host} cannot be resolved") from None
    if any(_private(str(info[4][0])) for info in infos):
        raise InvalidRequest(
            f"{host} is a private or local address; this server only connects to public ones "
            "(set FRONTDESK_ALLOW_PRIVATE_URLS=true on a self-hosted install to allow it)"
        )
