"""Finding an account's calendars (RFC 6764, principal, home set) and their flags."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit
from xml.etree import ElementTree

from caldav.collection import Calendar as DavCalendar
from caldav.davclient import DAVClient
from caldav.elements import dav
from caldav.elements.base import BaseElement
from caldav.lib import error as caldav_error

from booking.errors import CalendarUnavailable
from booking.retry import retryable_status
from calendars.base import CalendarInfo
from calendars.caldav.clients import _clean_url, _Link, _Refused
from calendars.ics import redact

_CALENDAR = "{urn:ietf:params:xml:ns:caldav}calendar"
_RESOURCETYPE = "{DAV:}resourcetype"
_DISPLAYNAME = "{DAV:}displayname"
_CURRENT_USER_PRINCIPAL = "{DAV:}current-user-principal"
_HOME_SET = "{urn:ietf:params:xml:ns:caldav}calendar-home-set"
_COMPONENTS = "{urn:ietf:params:xml:ns:caldav}supported-calendar-component-set"
# RFC 6638: a principal's scheduling inbox (2.2.1), the inbox's default calendar (9.2), and
# whether a calendar's events count as busy time (9.1); RFC 3744 5.4: what we may do there.
_INBOX_URL = "{urn:ietf:params:xml:ns:caldav}schedule-inbox-URL"
_DEFAULT_CALENDAR = "{urn:ietf:params:xml:ns:caldav}schedule-default-calendar-URL"
_SCHEDULE_TRANSP = "{urn:ietf:params:xml:ns:caldav}schedule-calendar-transp"
_TRANSPARENT = "{urn:ietf:params:xml:ns:caldav}transparent"
_PRIVILEGES = "{DAV:}current-user-privilege-set"
_SCHEDULE_INBOX = "{urn:ietf:params:xml:ns:caldav}schedule-inbox"
# Who a calendar belongs to: DAV:owner (RFC 3744 5.1), Nextcloud/ownCloud's owner-principal,
# and CalendarServer sharing (caldav-sharing.txt), whose resourcetype `shared` marks a calendar
# someone else shared with this account (`shared-owner` marks the account's own, shared out).
_OWNER = "{DAV:}owner"
_OWNER_PRINCIPAL = "{http://owncloud.org/ns}owner-principal"
_SHARED = "{http://calendarserver.org/ns/}shared"
# Any of these lets us add an event to a collection (RFC 3744 3.1-3.9: `write` and `all`
# aggregate `bind`; Radicale grants `write-content` on a calendar shared for writing).
_WRITE_PRIVILEGES = frozenset({"{DAV:}all", "{DAV:}write", "{DAV:}bind", "{DAV:}write-content"})
# What discovery cannot do without: asked for alone when a server refuses one of the others.
_ESSENTIAL_PROPS = [_RESOURCETYPE, _DISPLAYNAME, _CURRENT_USER_PRINCIPAL, _HOME_SET, _COMPONENTS]
_DISCOVERY_PROPS = [
    *_ESSENTIAL_PROPS,
    _INBOX_URL,
    _DEFAULT_CALENDAR,
    _SCHEDULE_TRANSP,
    _PRIVILEGES,
    _OWNER,
    _OWNER_PRINCIPAL,
]


def _propfind_body(props: list[str]) -> str:
    """A PROPFIND body asking for `props` (Clark names). Written out here because the
    library's list form silently drops every property it has no class for."""
    root = ElementTree.Element("{DAV:}propfind")
    wanted = ElementTree.SubElement(root, "{DAV:}prop")
    for name in props:
        ElementTree.SubElement(wanted, name)
    return ElementTree.tostring(root, encoding="unicode")


_DISCOVERY_BODY = _propfind_body(_DISCOVERY_PROPS)
_ESSENTIAL_BODY = _propfind_body(_ESSENTIAL_PROPS)
# Steps one discovery may take: redirects of the well-known address, principal, home.
_HOPS = 6
_WHAT_TO_GIVE = (
    "give the address of the account's calendar home or of one calendar "
    "(for iCloud https://caldav.icloud.com/)"
)


@dataclass(frozen=True)
class _Found:
    """A calendar collection found by discovery."""

    url: str
    name: str
    events: bool = True  # it takes VEVENTs (iCloud's Reminders take VTODOs only)
    transparent: bool = False  # schedule-calendar-transp: its events are no busy time
    writable: bool | None = None  # from current-user-privilege-set; None when not offered
    shared: bool = False  # someone else's calendar, shared with this account

    @property
    def counts_busy(self) -> bool:
        # Another person's calendar shared with the account (an iCloud family calendar, a
        # Nextcloud share) holds their events, not this staff member's busy time.
        return self.events and not self.transparent and not self.shared

    @property
    def takes_events(self) -> bool:
        return self.events and self.writable is not False


@dataclass(frozen=True)
class _Account:
    """What discovery found: the calendars, and the default one the server names, if any."""

    calendars: list[_Found]
    default: str | None = None  # schedule-default-calendar-URL, resolved

    def busy_urls(self) -> list[str]:
        """The calendars read when none are chosen: those whose events are busy time (all the
        event calendars, when the server marks every one transparent)."""
        busy = [c.url for c in self.calendars if c.counts_busy]
        return busy or [c.url for c in self.calendars if c.events]

    def infos(self) -> list[CalendarInfo]:
        """The calendars as the provider contract lists them. The primary one is the server's
        default calendar (RFC 6638 9.2) when it names one of them, else the first that takes
        events."""
        defaults = [
            c.url for c in self.calendars if c.events and _same_url(c.url, self.default or "")
        ]
        takes = [c.url for c in self.calendars if c.takes_events]
        primary = next(iter(defaults or takes), None)
        return [
            CalendarInfo(
                id=c.url,
                name=c.name,
                primary=c.url == primary,
                writable=c.takes_events,
                counts_busy=c.counts_busy,
            )
            for c in self.calendars
        ]


def _same_url(a: str, b: str) -> bool:
    return bool(a) and a.rstrip("/") == b.rstrip("/")


def _collections(client: DAVClient, link: _Link) -> _Account:
    """The calendars of the account the URL leads to (the URL itself, if it is a calendar)."""
    found = _walk(client, link, link.url)
    if found is None:
        start = _well_known(client, link)
        found = _walk(client, link, start) if start is not None else None
    if found is None:
        raise CalendarUnavailable(
            f"no CalDAV account or calendar found at {redact(link.url)}: {_WHAT_TO_GIVE}"
        )
    return found


def _walk(client: DAVClient, link: _Link, url: str) -> _Account | None:
    """Calendars reached from `url` by its own properties; None when it names no account."""
    seen: set[str] = set()
    previous: str | None = None  # the URL whose current-user-principal led here
    while url not in seen and len(seen) < _HOPS:
        seen.add(url)
        # A mistyped address 404s; only a server's root goes on to its well-known address.
        root = urlsplit(url).path in ("", "/")
        props = _properties(client, url, missing_ok=root or previous is not None)
        if props is None:
            if previous is None:
                return None
            url = previous  # the principal it names does not answer there: maybe it is a home
            break
        if _CALENDAR in _kinds(props):
            return _Account([_found(url, props)])
        homes = _hrefs(props.get(_HOME_SET))
        if homes:  # a principal
            found: list[_Found] = []
            default: str | None = None
            for home in homes:
                listed = _calendars_in(client, _hop(link, url, home), principal=url)
                found += listed.calendars
                default = default or listed.default
            inbox = _hrefs(props.get(_INBOX_URL))
            if default is None and inbox:  # an inbox outside the calendar home
                default = _default_calendar(client, _hop(link, url, inbox[0]))
            return _Account(found, default)
        principal = _hrefs(props.get(_CURRENT_USER_PRINCIPAL))
        if not principal:
            break
        previous, url = url, _hop(link, url, principal[0])
    # Names no principal nor home: a calendar home itself lists its calendars (the principal
    # of a server without calendar-home-set is its home too).
    listed = _calendars_in(client, url)
    return listed if listed.calendars else None


def _properties(client: DAVClient, url: str, *, missing_ok: bool) -> dict[str, Any] | None:
    """The discovery properties of the resource at `url`; None when it answers no WebDAV."""
    response, results = _propfind(client, url, depth=0)
    if response.status in (404, 410) and not missing_ok:
        raise caldav_error.error_from_response(caldav_error.NotFoundError, response)
    if retryable_status(response.status):
        raise caldav_error.error_from_response(caldav_error.PropfindError, response)
    merged: dict[str, Any] = {}
    for result in results:
        merged.update(result.properties)
    return merged or None


def _propfind(client: DAVClient, url: str, *, depth: int) -> tuple[Any, list[Any]]:
    """A discovery PROPFIND and its parsed results. The library refuses a whole answer in
    which one property came back with a status other than 200 or 404 (a 403 for a property
    the account may not read): then only the essential properties are asked for, and the
    calendars are listed without the optional flags (default, transparency, privileges)."""
    try:
        response = client.propfind(url, props=_DISCOVERY_BODY, depth=depth)
        return response, list(getattr(response, "results", None) or [])
    except caldav_error.ResponseError:
        response = client.propfind(url, props=_ESSENTIAL_BODY, depth=depth)
        return response, list(getattr(response, "results", None) or [])


def _calendars_in(client: DAVClient, home: str, *, principal: str | None = None) -> _Account:
    """The calendars directly inside the collection `home`, task lists included (they are
    listed as holding no busy time), and the default calendar named by a scheduling inbox
    among them."""
    response, results = _propfind(client, home, depth=1)
    if retryable_status(response.status):
        raise caldav_error.error_from_response(caldav_error.PropfindError, response)
    found = []
    default: str | None = None
    for result in results:
        props = result.properties
        url = _clean_url(urljoin(home, result.href))
        kinds = _kinds(props)
        if _CALENDAR in kinds:
            found.append(_found(url, props, principal=principal))
        elif _SCHEDULE_INBOX in kinds and default is None:
            default = _default_in(url, props)
    return _Account(found, default)


def _principal(base: str, props: dict[str, Any]) -> str | None:
    """The account's principal URL as the resource's current-user-principal names it."""
    named = _hrefs(props.get(_CURRENT_USER_PRINCIPAL))
    return _absolute(base, named[0]) if named else None


def _absolute(base: str, href: str) -> str | None:
    try:
        return _clean_url(urljoin(base, href))
    except CalendarUnavailable:
        return None


def _shared_with_account(url: str, props: dict[str, Any], principal: str | None) -> bool:
    """Whether the calendar at `url` is someone else's, shared with this account: the server
    marks it shared (CalendarServer), or names an owner other than the account's principal
    (DAV:owner, ownCloud owner-principal). Without a known principal only the mark counts."""
    if _SHARED in _kinds(props):
        return True
    principal = _principal(url, props) or principal
    if principal is None:
        return False
    for prop in (_OWNER, _OWNER_PRINCIPAL):
        owners = _hrefs(props.get(prop))
        owner = _absolute(url, owners[0]) if owners else None
        if owner is not None and not _same_principal(owner, principal):
            return True
    return False


def _same_principal(a: str, b: str) -> bool:
    """Whether two principal URLs name the same principal: by path, since one service may be
    seen through several hosts (iCloud names the principal on its front door and the
    calendars' owner on the account's own host)."""
    return urlsplit(a).path.rstrip("/") == urlsplit(b).path.rstrip("/")


def _found(url: str, props: dict[str, Any], *, principal: str | None = None) -> _Found:
    components = _hrefs(props.get(_COMPONENTS))
    privileges = _hrefs(props.get(_PRIVILEGES))
    return _Found(
        shared=_shared_with_account(url, props, principal),
        url=url,
        name=_name(props, url),
        # No supported-calendar-component-set: the collection takes every component.
        events=not components or "VEVENT" in components,
        transparent=_TRANSPARENT in _hrefs(props.get(_SCHEDULE_TRANSP)),
        writable=bool(_WRITE_PRIVILEGES.intersection(privileges)) if privileges else None,
    )


def _default_calendar(client: DAVClient, inbox: str) -> str | None:
    """The default calendar the scheduling inbox at `inbox` names (RFC 6638 9.2), if any.
    An inbox that does not answer, or refuses this account, names none: the first event
    calendar is used then (a failure a retry may mend is raised)."""
    try:
        props = _properties(client, inbox, missing_ok=True)
    except caldav_error.DAVError as exc:
        if exc.status is None or retryable_status(exc.status) or exc.status == 401:
            raise
        return None
    return _default_in(inbox, props) if props is not None else None


def _default_in(inbox: str, props: dict[str, Any]) -> str | None:
    href = _hrefs(props.get(_DEFAULT_CALENDAR))
    if not href:
        return None
    try:
        return _clean_url(urljoin(inbox, href[0]))
    except CalendarUnavailable:  # not an http(s) address: as if none were named
        return None


def _well_known(client: DAVClient, link: _Link) -> str | None:
    """Where the server's `/.well-known/caldav` leads (RFC 6764 section 5), redirects followed
    one by one, so each step's host is checked and later hrefs resolve against the right one.
    None when the server has no such address."""
    parts = urlsplit(link.url)
    url = urlunsplit((parts.scheme, parts.netloc, "/.well-known/caldav", "", ""))
    for _ in range(_HOPS):
        # No credentials: a redirect needs none, and they go only where the walk leads.
        answer = client.session.request(
            "PROPFIND",
            url,
            headers={"Depth": "0"},
            allow_redirects=False,
            timeout=client.timeout,
        )
        location = answer.headers.get("Location")
        status = answer.status_code
        answer.close()
        if status in (301, 302, 303, 307, 308) and location:
            url = _hop(link, url, location)
            continue
        if status is not None and retryable_status(status):
            raise _Refused(f"{link.name} answered HTTP {status}", status)
        return url if status in (200, 207, 401) else None
    return None


def _hop(link: _Link, base: str, href: str) -> str:
    """`href` resolved against `base`, where discovery may go next from there."""
    target = _clean_url(urljoin(base, href))
    was, to = urlsplit(base), urlsplit(target)
    if was.scheme == "https" and to.scheme != "https":
        raise CalendarUnavailable(
            f"{redact(base)} sent the CalDAV account to an unencrypted address: {_WHAT_TO_GIVE}"
        )
    if (
        to.hostname != was.hostname
        and _private_host(to.hostname)
        and not _private_host(urlsplit(link.url).hostname)
    ):
        raise CalendarUnavailable(
            f"{redact(base)} sent the CalDAV account to a private address: {_WHAT_TO_GIVE}"
        )
    return target


def _private_host(host: str | None) -> bool:
    """Whether `host` is, or resolves to, a non-public address (one it cannot resolve counts:
    nothing is sent there anyway). The server's own rule for typed addresses lives in
    `calendars.netguard`; discovery only keeps a public account from leading inward."""
    if not host:
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return True
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            return True
    return False


def _kinds(props: dict[str, Any]) -> list[str]:
    kinds = props.get(_RESOURCETYPE) or []
    return [kinds] if isinstance(kinds, str) else [k for k in kinds if isinstance(k, str)]


def _hrefs(value: Any) -> list[str]:
    """A parsed property's text values (the library gives one as a string, several as a list)."""
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, list):
        return [v.strip() for v in value if isinstance(v, str) and v.strip()]
    return []


def _name(props: dict[str, Any], url: str) -> str:
    name = props.get(_DISPLAYNAME)
    return name.strip() if isinstance(name, str) and name.strip() else _last_segment(url)


def _calendar(client: DAVClient, url: str) -> DavCalendar:
    """The calendar at the absolute `url`. One on another host than the client's root (iCloud
    keeps an account's calendars on a host of its own) moves the root there first, as the
    library does itself on finding such a calendar home: the library joins the hrefs of a
    calendar's events onto the root, and refuses another host's."""
    root, there = urlsplit(str(client.url)), urlsplit(url)
    if (root.scheme, root.netloc) != (there.scheme, there.netloc):
        client.url = client.url.relocate(url)
    return DavCalendar(client=client, url=url)


def _resource_types(client: DAVClient, url: str) -> list[str]:
    props = _own_properties(_calendar(client, url), [dav.ResourceType()])
    kinds = props.get(dav.ResourceType.tag) or []
    return [kinds] if isinstance(kinds, str) else list(kinds)


def _list_calendars(client: DAVClient, link: _Link) -> list[CalendarInfo]:
    return _collections(client, link).infos()


def _last_segment(url: str) -> str:
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1] or url


def _own_properties(calendar: DavCalendar, props: list[BaseElement]) -> dict[str, Any]:
    """The calendar's own values of `props` (a Depth 0 PROPFIND), by property tag."""
    answer = calendar.get_properties(props)
    if not isinstance(answer, dict):  # only the library's async client answers a coroutine
        raise TypeError("the CalDAV library's synchronous PROPFIND did not answer a dict")
    return answer
