"""Where a request came from, as kept with a consent, confirmation or opt-out: bounded to its columns."""

from __future__ import annotations

# the widths of the columns an IP address and a user agent land in (an IPv6 address with a
# zone fits in 45; a user agent is whatever the browser sends, so it is cut)
MAX_IP = 45
MAX_USER_AGENT = 500


def request_origin(ip: str | None, user_agent: str | None) -> tuple[str | None, str | None]:
    """The IP address and user agent as they are kept: cut to fit, and None when empty."""
    return (ip[:MAX_IP] if ip else None, user_agent[:MAX_USER_AGENT] if user_agent else None)
