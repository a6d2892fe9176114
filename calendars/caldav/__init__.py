"""CalDAV calendars (Apple iCloud, Fastmail, Nextcloud, Radicale) through the `caldav` library.

Account settings: `url` and `username`; secret: `password` (an app-specific one for iCloud).
The URL is the address the user knows: the server's (https://caldav.icloud.com/), the account's
principal, its calendar home, or one calendar. The account's calendars are found the way CalDAV
clients find them (`_collections`): the URL's own properties first (a calendar is itself; a
`current-user-principal`, RFC 5397, leads to the principal; a principal's `calendar-home-set`,
RFC 4791 section 6.2.1, to the collection holding its calendars), then, when the URL answers
none of that, the server's `/.well-known/caldav` (RFC 6764), redirects followed one by one.
The principal and the home may be on other paths or hosts (iCloud keeps both on a host of
the account's own, `p07-caldav.icloud.com`); a step to another host may not lead from a public
address into a private one, nor from https to http. A calendar's id is its collection URL.

`list_calendars` lists every calendar collection with the flags of the provider contract:
`primary` is the calendar the scheduling inbox names as `schedule-default-calendar-URL`
(RFC 6638 section 9.2; the inbox is the principal's `schedule-inbox-URL`, or the one listed in
the home), else the first writable event calendar; `counts_busy` is false for a collection
whose supported-calendar-component-set lacks VEVENT (iCloud's Reminders, task lists) or whose
`schedule-calendar-transp` is transparent (RFC 6638 section 9.1), and for another person's
calendar shared with the account (an iCloud family calendar, a Nextcloud share: CalendarServer's
`shared` resourcetype, or a `DAV:owner` / ownCloud `owner-principal` other than the account's
principal; RFC 3744 section 5.1); `writable` comes from
`current-user-privilege-set` (RFC 3744 section 5.4) when the server offers it, and is false
for a collection that takes no events. `busy` with no calendar ids reads the ones that count.

Busy time comes from the events themselves, read with a calendar-query over the window and
expanded by `calendars.ics`, so a CalDAV calendar and an ICS feed agree on what TRANSPARENT,
CANCELLED, all-day dates and recurrence exceptions mean, and key events alike (UID, or UID and
RECURRENCE-ID for an instance). Free-busy-query is not used: iCloud answers it with 400, and
Radicale reports all-day events as UTC midnight to midnight, the wrong day for New York.

`sync` reads the whole window each time (CalDAV has no cheap delta of expanded instances); its
cursor remembers the collection's DAV:sync-token (or CalendarServer getctag) and the window,
so a sync that finds both unchanged answers "nothing changed" after one small PROPFIND.

Writes are idempotent by UID: an event lives at `<calendar>/<uid>.ics` and is created with
`If-None-Match: *`, so a retry after a timed-out attempt that did land gets 412 and updates
that event instead of writing a second copy. The UID (the event id we return) comes from
`EventSpec.key`.

The library blocks, so every call runs in a worker thread under a timeout. Whatever goes wrong
becomes `CalendarUnavailable`, whose message names the server by host only (the library's own
error texts carry full URLs and are never passed on): `NeedsRelink` for a refused password (401)
or a refused access to the account itself (403 while checking or listing it), never retried; a
403 to one calendar or event (a missing privilege there, a precondition such as a UID conflict)
is final for that request only, naming the calendar; retryable for a 5xx, 429 or 408 (with that
answer's `Retry-After`) and for a connection that failed or timed out (without one); not
retryable for any other refusal (404, 400, ...). Each operation goes through the injected
`booking.retry.RetryPolicy`, which tries a retryable failure again within the operation's
timeout.

Clients are kept between operations, per account (`_Clients`), with their open connections and
the login they negotiated; an account whose server asked for Basic once gets its credentials sent
up front by every new client, so no operation pays an unauthenticated request and its 401 (nor,
over https, a new TLS handshake). A kept connection the server had closed meanwhile is not the
server's failure: the operation is sent once more on a fresh one at once (`_Clients.run`),
before and apart from the retry policy. `CaldavProvider.close` ends the kept connections.
No busy time is cached here: `busy` is the live re-check, and the busy cache lives in the
database, filled by `sync`.

Modules: `clients` (the account's link, the kept clients, error translation), `discovery`
(finding the calendars and their flags), `events` (reading and writing events),
`provider` (`CaldavProvider`). Inside this package `import caldav` is the CalDAV library.
"""

from calendars.caldav.events import event_uid
from calendars.caldav.provider import CaldavProvider

__all__ = ["CaldavProvider", "event_uid"]
