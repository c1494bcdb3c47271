"""mailferry: a mail transfer agent that reads Postfix's configuration language."""

__version__ = "0.1.0"
