"""`mailer doctor`: whether the mail will land, checked against DNS, the relay and the config."""
