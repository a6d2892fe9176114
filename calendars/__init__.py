"""Linked calendars: Google, Microsoft 365/Outlook, CalDAV (iCloud, Fastmail, Nextcloud), ICS.

`base.CalendarProvider` is the one interface; each provider kind has its own module (`ics`)
or package split by job: `google` and `microsoft` (`transport`, `wire`, `provider`, `oauth`),
`caldav` (`clients`, `discovery`, `events`, `provider`);
`service.CalendarService` keeps the busy cache, writes bookings back and links accounts, and
implements booking's `CalendarBusy` and `CalendarWriter` ports; `web` has the linking and
notification endpoints. The application (`frontdesk.wiring`) builds the service from settings.
"""
