"""The scheduling domain: businesses, services, staff, rules, slot search, holds, bookings, leads.

Imports nothing from the web, Twilio or LLM layers; everything outside talks to it through the
functions in `booking.scheduler`, `booking.business_file` and the models in `booking.models`.
"""
