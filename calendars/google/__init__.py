"""Google Calendar accounts, through google-api-python-client, and Google's OAuth 2.0 flow.

`GoogleProvider` reads and writes one linked Google account's calendars:

- busy time from `freeBusy.query`, at most 50 calendars and 90 days a query, every calendar's
  `errors` checked (Google answers 200 when one calendar fails). Google decides what is busy
  there: transparent ("show as available") and declined events are free, tentative ones busy,
  all-day dates are days in the calendar's own time zone.
- the busy cache's feed from `events.list` with `singleEvents=true`: a full read of a window, or
  the changes since a `syncToken` (which must come without timeMin/timeMax); 410 Gone means
  the token expired, and the answer is a full read instead (`full=True`).
- appointments written under an event id derived from our key (base32hex), so a retry after a
  timed-out insert that did land meets 409 and updates that event instead of adding another.
- change notifications through `events.watch` channels, ended with `channels.stop`.

The library blocks, so each request runs in a worker thread under the operation's time limit,
with an `httplib2.Http` lent to it alone (httplib2 is not thread-safe) from the provider's
`_Https`, which keeps them and their open connections between requests: no new TCP and TLS
handshake per request. `GoogleProvider.close` ends them. The service object is built once per
endpoint from the bundled discovery document. 408, 429, 5xx and 403 rate-limit answers and
network errors are retried by `booking.retry.RetryPolicy` (back-off, Retry-After honoured) a
bounded number of times inside that limit; any other 4xx is not retryable; a 401 refreshes the
access token once. `GoogleOAuth` is the authorization-code flow with `state` and
PKCE, over httpx.

Modules: `transport` (the service object, kept connections, errors from Google's answers),
`wire` (Google's JSON to our values and back), `provider` (`GoogleProvider`), `oauth`
(`GoogleOAuth`).

Errors (all are `booking.errors.CalendarUnavailable`, whose messages never hold a token):

    CalendarUnavailable       unreachable, too slow, rate-limited past the limit, refused
    ├── GoogleApiError        Google answered an error (`status`, `reason`; retryable only
    │                         for 408, 429, 5xx and rate-limit 403s)
    └── NeedsRelink           the grant is gone: refresh refused, or a fresh token refused too
"""

from calendars.google.oauth import DEFAULT_SCOPES, GoogleOAuth
from calendars.google.provider import GoogleProvider
from calendars.google.transport import GoogleApiError
from calendars.google.wire import MAX_HEADER, PushHeaders, event_id_for

__all__ = [
    "DEFAULT_SCOPES",
    "MAX_HEADER",
    "GoogleApiError",
    "GoogleOAuth",
    "GoogleProvider",
    "PushHeaders",
    "event_id_for",
]
