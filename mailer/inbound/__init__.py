"""Inbound: mail that comes back (bounces, complaints, mailto unsubscribes) and what it does."""
