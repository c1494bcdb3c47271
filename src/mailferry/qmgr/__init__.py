"""qmgr: the queue manager (Postfix's qmgr and bounce): scheduling, retries and
backoff, the active set's limits, queue lifetimes, and DSN and delay notices.
It reads and updates the queue (queue/) and hands new notices to cleanup."""
