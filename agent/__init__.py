"""The voice agent: one conversation engine (`engine`) driving the booking service through tools
(`tools`), with a scripted message-taking fallback (`fallback`) for when the LLM fails."""
