"""A page as a browser reads it: its text, the elements it creates, its title."""

from html.parser import HTMLParser


class PageText(HTMLParser):
    """The text nodes of a page (outside <details> apart), the tags it opens, its title."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []  # every text node, decoded
        self.shown: list[str] = []  # the text nodes not inside a (closed) <details>
        self.tags: list[str] = []
        self.title = ""
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in _VOID:
            self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._open:
            while self._open.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if "details" not in self._open or "summary" in self._open:
            self.shown.append(data)
        if self._open and self._open[-1] == "title":
            self.title += data


# Elements without an end tag.
_VOID = frozenset({"meta", "link", "br", "hr", "img", "input", "wbr", "source", "col", "area"})


def page_text(page: str | bytes) -> PageText:
    parser = PageText()
    parser.feed(page.decode() if isinstance(page, bytes) else page)
    parser.close()
    return parser
