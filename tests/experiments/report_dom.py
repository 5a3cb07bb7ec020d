"""A small reading of report.html (the written file or a browser's DOM dump) for the tests:
the elements with an id, the in-page links, the claims and the figure each links to."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    children: list[Element] = field(default_factory=list)


class _Reader(HTMLParser):
    VOID = frozenset({"img", "meta", "br", "hr", "input", "link"})

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Element("document", {})
        self.stack = [self.root]
        self.by_id: dict[str, Element] = {}
        self.links: list[Element] = []

    def handle_starttag(self, tag, attrs):
        element = Element(tag, {key: value or "" for key, value in attrs})
        self.stack[-1].children.append(element)
        if "id" in element.attrs:
            self.by_id[element.attrs["id"]] = element
        if tag == "a" and element.attrs.get("href", "").startswith("#"):
            self.links.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_endtag(self, tag):
        for index in range(len(self.stack) - 1, 0, -1):
            if self.stack[index].tag == tag:
                del self.stack[index:]
                return

    def handle_data(self, data):
        for element in self.stack[1:]:
            element.text += data


def read(page: str) -> _Reader:
    reader = _Reader()
    reader.feed(page)
    return reader


def find_all(element: Element, tag: str, class_: str | None = None) -> list[Element]:
    found = []
    for child in element.children:
        classes = child.attrs.get("class", "").split()
        if child.tag == tag and (class_ is None or class_ in classes):
            found.append(child)
        found += find_all(child, tag, class_)
    return found


def claim_rows(page: str) -> list[tuple[str, str]]:
    """(id, verdict) of each row of the claims table, in order."""
    reader = read(page)
    (table,) = find_all(reader.root, "table", "claims-table")
    rows = find_all(table, "tr")[1:]
    return [
        (cells[0].text.strip(), cells[3].text.strip())
        for row in rows
        if len(cells := find_all(row, "td")) == 5
    ]
