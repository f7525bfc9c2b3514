"""The web app (`mailer serve`): an app factory and one blueprint per page family."""

from mailer.web.app import create_app, waitress_proxy_settings

__all__ = ["create_app", "waitress_proxy_settings"]
