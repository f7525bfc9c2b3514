"""harmony-mailer: a CAN-SPAM compliant newsletter mailer."""

__version__ = "0.1.0"
