"""Recipients: lists, subscribers and their import, suppression, opt-outs and confirmation."""
