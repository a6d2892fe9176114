"""Twilio voice and SMS: webhooks, the ConversationRelay websocket and outbound texts."""
