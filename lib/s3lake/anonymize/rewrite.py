"""The anonymizer's pure core: a JSON-lines byte stream through the field rules, line by line.

No S3, no Spark: bytes in (gunzipped on the way when the object is gzip), bytes out. Untouched lines are
copied byte for byte; a changed line is re-serialized in its own style (compact or spaced, ASCII-escaped
or not, its ``\\r`` kept). A line that is not JSON, or longer than the limit, raises :class:`BadLine`.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

if TYPE_CHECKING:
    from s3lake.anonymize.rules import RuleSet

READ_CHUNK = 1024 ** 2
DEFAULT_MAX_LINE = 256 * 1024 ** 2


class BadLine(ValueError):
    """A line that is not JSON (or too long): the object is reported FAILED, nothing is written."""

    def __init__(self, number: int, reason: str) -> None:
        super().__init__(f"line {number}: {reason}")
        self.number = number


@dataclass
class Stats:
    """An object's counts: lines, records changed, and per rule (label) the fields it changed and the
    fields its path reached."""

    lines: int = 0
    records_changed: int = 0
    fields: dict = field(default_factory=dict)  # rule label -> fields changed
    matched: dict = field(default_factory=dict)  # rule label -> fields reached (changed or not)
    bytes_in: int = 0

    def fields_json(self) -> str | None:
        return json.dumps(dict(sorted(self.fields.items()))) if self.fields else None

    def matched_json(self) -> str | None:
        return json.dumps(dict(sorted(self.matched.items()))) if self.matched else None


def is_gzip(key: str, content_encoding: str | None) -> bool:
    encodings = [e.strip().lower() for e in (content_encoding or "").split(",")]
    return "gzip" in encodings or key.lower().endswith(".gz")


def line_batches(chunks: Iterable[bytes], max_line: int = DEFAULT_MAX_LINE) -> Iterator[tuple[list[bytes], bool]]:
    """The lines of a byte stream, a list per input chunk, each line without its ``\\n``; the flag says
    whether the batch's last line ended with one (only the stream's final line may not)."""
    pending: list[bytes] = []
    pending_len = 0
    number = 0
    for chunk in chunks:
        if chunk.find(b"\n") < 0:
            pending.append(chunk)
            pending_len += len(chunk)
            if pending_len > max_line:
                raise BadLine(number + 1, f"longer than {max_line} bytes")
            continue
        if pending:
            chunk = b"".join(pending) + chunk
            pending, pending_len = [], 0
        lines = chunk.split(b"\n")
        tail = lines.pop()
        for i, line in enumerate(lines, number + 1):
            if len(line) >= max_line:  # + its newline
                raise BadLine(i, f"longer than {max_line} bytes")
        number += len(lines)
        yield lines, True
        if tail:
            pending, pending_len = [tail], len(tail)
            if pending_len > max_line:
                raise BadLine(number + 1, f"longer than {max_line} bytes")
    if pending:
        yield [b"".join(pending)], False


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Built once: json.loads/json.dumps with keyword arguments build a new decoder/encoder per call, and
# even a prebuilt JSONEncoder.encode builds its C encoder on every call; together a third of the
# per-line cost on large objects. Decoded JSON has no cycles, so no circular-reference check.
_DECODER = json.JSONDecoder(parse_constant=_no_constants)


_SCAN = _DECODER.scan_once


def _make_encoder(spaced: bool, ascii_only: bool) -> Callable[[Any], str]:
    item_sep, key_sep = (", ", ": ") if spaced else (",", ":")
    fallback = json.JSONEncoder(ensure_ascii=ascii_only, separators=(item_sep, key_sep), check_circular=False)
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # no C accelerator (e.g. PyPy)
        return fallback.encode
    string = json.encoder.encode_basestring_ascii if ascii_only else json.encoder.encode_basestring
    encoder = c_make_encoder(None, fallback.default, string, None, key_sep, item_sep, False, False, True)
    return lambda record: "".join(encoder(record, 0))


_ENCODERS = {(spaced, ascii_only): _make_encoder(spaced, ascii_only)
             for spaced in (True, False) for ascii_only in (True, False)}


def _decode(text: str) -> Any:
    """``json.loads`` for one line: the C scanner straight away, the full decoder for the rare rest
    (leading whitespace, trailing data) so errors read the same."""
    try:
        record, end = _SCAN(text, 0)
    except StopIteration:
        return _DECODER.decode(text)
    if end != len(text) and not text[end:].isspace():
        return _DECODER.decode(text)
    return record


def _rewrite_text(text: bytes, rules: RuleSet, changed: dict, matched: dict) -> bytes | None:
    """One line without its ``\\n`` (a ``\\r`` before it is kept): the new text, or None when no rule
    changed it; per-rule counts are added to ``changed`` and ``matched``."""
    cr = text.endswith(b"\r")
    if cr:
        text = text[:-1]
    if not text or text.isspace():
        return None
    record = _decode(text.decode("utf-8"))
    if not rules.apply_counted(record, changed, matched):
        return None
    spaced = b'": ' in text or b'", "' in text
    out = _ENCODERS[(spaced, text.isascii())](record).encode("utf-8")
    return out + b"\r" if cr else out


def rewrite_line(line: bytes, rules: RuleSet) -> tuple[bytes | None, list[str]]:
    """(new line or None when untouched, labels of the rules that changed it). Raises ValueError for a
    non-JSON line."""
    newline = line.endswith(b"\n")
    changed: dict = {}
    new = _rewrite_text(line[:-1] if newline else line, rules, changed, {})
    return (new + b"\n" if new is not None and newline else new), list(changed)


def rewrite_chunks(chunks: Iterable[bytes], rules: RuleSet, stats: Stats,
                   max_line: int = DEFAULT_MAX_LINE) -> Iterator[bytes]:
    """One output piece per input chunk: its lines through the rules, untouched ones byte for byte.
    Counts lines, changed records and per-rule fields in ``stats``; a non-JSON line raises :class:`BadLine`."""
    changed, matched = stats.fields, stats.matched
    for lines, terminated in line_batches(chunks, max_line):
        number = stats.lines
        for i, line in enumerate(lines):
            try:
                new = _rewrite_text(line, rules, changed, matched)
            except ValueError as exc:
                raise BadLine(number + i + 1, f"not valid JSON: {exc}") from None
            if new is not None:
                lines[i] = new
                stats.records_changed += 1
        stats.lines = number + len(lines)
        piece = b"\n".join(lines)
        yield piece + b"\n" if terminated else piece


def decoded_chunks(raw: Iterable[bytes], gzipped: bool, stats: Stats) -> Iterator[bytes]:
    """The body's bytes, gunzipped (every gzip member) when ``gzipped``; counts raw bytes in ``stats``."""
    if not gzipped:
        for chunk in raw:
            stats.bytes_in += len(chunk)
            yield chunk
        return
    inflater = zlib.decompressobj(wbits=31)
    first = True
    for chunk in raw:
        stats.bytes_in += len(chunk)
        if first and chunk:
            first = False
            if chunk[:2] != b"\x1f\x8b":
                raise BadLine(1, "object says gzip but its body is not gzip data")
        while chunk:
            out = inflater.decompress(chunk, READ_CHUNK * 4)
            if out:
                yield out
            if inflater.eof:  # next gzip member, if any
                chunk = inflater.unused_data
                inflater = zlib.decompressobj(wbits=31)
            else:
                chunk = inflater.unconsumed_tail
    if not inflater.eof and not first:
        tail = inflater.flush()
        if tail:
            yield tail
