"""The web app (`mailer serve`): unsubscribe and confirmation pages."""

from mailer.web.app import create_app

__all__ = ["create_app"]
