"""Microsoft 365 and Outlook.com calendars through Microsoft Graph v1.0 (httpx) and MSAL.

Busy time is read from the events themselves with `calendarView`, not `getSchedule`, which
does not work for personal (outlook.com) accounts. What is busy, per the event resource:

- `showAs` tentative, busy, oof (and unknown, to be safe) are busy; free and
  workingElsewhere (working, just not at the desk) are not;
- a cancelled event (`isCancelled`) and one the account declined (`responseStatus`) are free;
- an all-day event (`isAllDay`) comes back midnight to midnight whatever zone is asked for, so
  its dates are read as whole days in the staff member's zone. Graph matches the query window
  against the instant it stores them at, so the window is widened by a day each side and cut
  exactly afterwards.

Incremental sync uses `calendarView/delta`; its `@odata.deltaLink` is the cursor. Occurrences
of a series come in a delta with only their id, type, master and times, so what decides
busy-ness is read from the series master (once per round). An expired state token (410, or a
`syncStateNotFound`/`resyncRequired` code) answers a full sync.

Writes are idempotent by `transactionId`, derived from `EventSpec.key`: Graph discards a
second create carrying the same one, so a retry after a timed-out attempt that did land does
not write a second event. An update of an event deleted in the calendar creates it anew, with a
transactionId derived from the key and the lost event id, so that re-creation is idempotent
too.

Requests share one `httpx.AsyncClient`. 408, 429 and 503 answers (and other 5xx answers to a
request that may be repeated) are retried by `booking.retry.RetryPolicy` a bounded number of
times, honouring `Retry-After` (an HTTP-date read against the injected clock), within the
operation's time limit: a `Retry-After` longer than the policy waits or than the time left ends
the retries at once, the error keeping it as `retry_after`; any other 4xx is not retryable. A
request that timed out is not sent again within the operation (it may still land). A 401
refreshes the access token once; a 401 to the fresh token, or a refused refresh, is
`NeedsRelink`. Whatever else goes wrong becomes `CalendarUnavailable`, whose message names the
account and never carries a token, a secret or a delta link.

Modules: `transport` (Graph's HTTP answers as errors), `wire` (Graph's JSON to our values and
back, change notifications), `provider` (`MicrosoftProvider`, which sends the requests),
`oauth` (`MicrosoftOAuth`).

Errors raised here:

    CalendarUnavailable            Graph refused (a 4xx: not retryable), failed, or did not
    │                              answer in time (retryable)
    ├── NeedsRelink                the grant is gone (`invalid_grant`, a fresh token refused,
    │                              no tokens): link the account again
    booking.errors.InvalidRequest  an OAuth callback that does not belong to the flow
"""

from calendars.microsoft.oauth import AUTHORITY, SCOPES, MicrosoftOAuth
from calendars.microsoft.provider import GRAPH_URL, SUBSCRIPTION_LIFETIME, MicrosoftProvider
from calendars.microsoft.wire import (
    MAX_NOTIFICATION_BODY,
    MAX_NOTIFICATIONS,
    GraphId,
    GraphNotification,
    GraphNotifications,
)

__all__ = [
    "AUTHORITY",
    "GRAPH_URL",
    "MAX_NOTIFICATIONS",
    "MAX_NOTIFICATION_BODY",
    "SCOPES",
    "SUBSCRIPTION_LIFETIME",
    "GraphId",
    "GraphNotification",
    "GraphNotifications",
    "MicrosoftOAuth",
    "MicrosoftProvider",
]
