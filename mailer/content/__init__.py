"""Content: templates, the message itself (MIME, footer, DKIM) and the compliance gate."""
