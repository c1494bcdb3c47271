"""atheris (libFuzzer) target: the envelope address parser and split_path.

A crash is any exception other than AddressError, a control character in a
parsed address, or a parsed address that does not read back the same.

    .venv/bin/python tests/reliability/fuzz/fuzz_address.py -max_total_time=600 CORPUS_DIR
"""

import sys

import atheris

with atheris.instrument_imports(include=["mailferry"]):
    from mailferry.protocol.address import RECIPIENT, SENDER, AddressError, parse_path, split_path


def parse_one(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    flags = provider.ConsumeIntInRange(0, 7)
    # As smtpd decodes a command line: invalid UTF-8 becomes lone surrogates.
    text = provider.ConsumeBytes(provider.remaining_bytes()).decode("utf-8", "surrogateescape")
    path_text, _parameters = split_path(text)
    role = RECIPIENT if flags & 1 else SENDER
    smtputf8, strict = bool(flags & 2), bool(flags & 4)
    try:
        path = parse_path(path_text, allow_smtputf8=smtputf8, role=role, strict=strict)
    except AddressError:
        return
    if any(ord(char) < 0x20 or 0xD800 <= ord(char) <= 0xDFFF for char in path.address):
        raise AssertionError(f"a control or invalid byte passed: {path!r}")
    again = parse_path(path.bracketed(), allow_smtputf8=smtputf8, role=role, strict=False)
    if (again.local, again.domain) != (path.local, path.domain):
        raise AssertionError(f"{path!r} reads back as {again!r}")


def main() -> None:
    atheris.Setup(sys.argv, parse_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
