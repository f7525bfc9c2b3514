"""Delivery: the sending pipeline, its claims on the database, the SMTP transport, due work."""
