"""Read the label of every image from a COCO `instances_*.json` without loading the whole json.

`instances_train2017.json` is 450 MB; `json.load` turns it into several GB of Python objects. Only
three facts per annotation matter here (image, category, area), so the file is read as a stream: the
top-level object is walked key by key and the `images` and `annotations` arrays are decoded one
element at a time. Memory stays at one read buffer plus two small maps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

from raeflow.errors import SourceError

_CHUNK = 1 << 20
_WHITESPACE = " \t\n\r"


class _JsonStream:
    """A cursor over a text stream that decodes one JSON value at a time."""

    def __init__(self, stream: IO[str], name: str) -> None:
        self.stream, self.name = stream, name
        self.buf, self.pos, self.eof = "", 0, False
        self.decoder = json.JSONDecoder()

    def _fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.stream.read(_CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.buf = self.buf[self.pos :] + chunk
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next non-blank character ('' at the end of the stream)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buf) or not self._fill():
                return self.buf[self.pos : self.pos + 1]

    def expect(self, char: str) -> None:
        """Consume `char`, or fail naming where the json is broken."""
        if self.peek() != char:
            raise SourceError(f"{self.name} is not valid COCO json (expected {char!r})")
        self.pos += 1

    def value(self) -> Any:
        """Decode the next complete JSON value."""
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                if self._fill():
                    continue
                raise SourceError(f"{self.name} is not valid COCO json ({err.msg})") from err
            # A number or literal that touches the buffer's end may continue in the next chunk.
            if end == len(self.buf) and self._fill():
                continue
            self.pos = end
            return value

    def items(self) -> Iterator[tuple[str, Any]]:
        """(key, value-or-cursor) of the top-level object; for arrays the caller walks `elements`."""
        self.expect("{")
        if self.peek() == "}":
            return
        while True:
            key = self.value()
            self.expect(":")
            yield key, None
            following = self.peek()
            if following == ",":
                self.pos += 1
            elif following == "}":
                return
            else:
                raise SourceError(f"{self.name} is not valid COCO json (after key {key!r})")

    def elements(self) -> Iterator[Any]:
        """The elements of the array at the cursor, one at a time."""
        self.expect("[")
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            yield self.value()
            following = self.peek()
            self.pos += 1
            if following == "]":
                return
            if following != ",":
                raise SourceError(f"{self.name} is not valid COCO json (inside an array)")


def read_labels(stream: IO[str], *, name: str) -> dict[str, int]:
    """COCO file name -> category id of the image's largest annotation (by `area`, ties: lowest id).

    Images without annotations are absent from the result.
    """
    files: dict[int, str] = {}
    best: dict[int, tuple[float, int, int]] = {}  # image id -> (area, -annotation id, category)
    cursor = _JsonStream(stream, name)
    try:
        for key, _ in cursor.items():
            if key == "images":
                for image in cursor.elements():
                    files[image["id"]] = image["file_name"]
            elif key == "annotations":
                for ann in cursor.elements():
                    area, ann_id = float(ann.get("area", 0.0)), int(ann.get("id", 0))
                    candidate = (area, -ann_id, int(ann["category_id"]))
                    current = best.get(ann["image_id"])
                    if current is None or candidate[:2] > current[:2]:
                        best[ann["image_id"]] = candidate
            else:
                cursor.value()  # info, licenses, categories: small, skipped
    except (KeyError, TypeError, ValueError) as err:
        raise SourceError(f"{name} is not a COCO instances file (bad image or annotation: {err!r})") from err
    return {files[image_id]: category for image_id, (_, _, category) in best.items() if image_id in files}
