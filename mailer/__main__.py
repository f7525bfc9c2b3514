"""Allows `python -m mailer`."""

from mailer.cli import main

# guarded: helper processes started with spawn import this module again
if __name__ == "__main__":
    main()
