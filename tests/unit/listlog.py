"""A log for unit tests: mailferry.maillog.MemoryLog, which keeps (program, text), what MailLog
would have written."""

from mailferry.maillog import MemoryLog as ListLog

__all__ = ["ListLog"]
