"""Content inspection: the MIME structure (mime.py) and header and body checks (checks.py), pure, no I/O."""
