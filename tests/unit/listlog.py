"""A log for unit tests: it keeps (program, text), what MailLog would have written."""


class ListLog:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def line(self, program: str, text: str) -> None:
        self.lines.append((program, text))

    def warning(self, program: str, text: str) -> None:
        self.lines.append((program, f"warning: {text}"))

    def texts(self) -> list[str]:
        return [text for _, text in self.lines]

    def warnings(self) -> list[str]:
        return [text for text in self.texts() if text.startswith("warning: ")]
