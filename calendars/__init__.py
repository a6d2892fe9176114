"""Linked calendars: providers that read (and later write) a staff member's own calendar.

`base.CalendarProvider` is the one interface; each provider kind has its own module (`ics.py`);
`registry.CalendarRegistry` chooses among them and implements booking's `CalendarBusy` port.
"""
