"""The reliability suite (issue 14): crashes, faults, signals and hostile input against the real daemon."""
