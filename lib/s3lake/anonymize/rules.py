"""Field rules for the anonymization pass: parse a rules file, apply it to one JSON record.

A rules file is a JSON list (or ``{"rules": [...]}``) of ``{"path": ..., "action": ..., ...options}``:

* ``path``: dot-separated field names; ``name[]`` steps into every element of an array, e.g.
  ``file_contents``, ``user.email``, ``items[].note``, ``tags[]`` (grammar: :mod:`s3lake.field_paths`).
  A dotted path also reaches a literal key holding dots: ``id.orig_h`` is Zeek's key ``id.orig_h`` where
  a record has it, ``id`` -> ``orig_h`` where that exists, and both where both do; ```id.orig_h``` (in
  backticks) is only the literal key. A path that does not exist in a record does nothing (a rule never
  adds a field); each rule counts the fields it reached and changed, so one that reaches nothing in a
  whole run is reported, never silent.
* ``action``:

  - ``blank``: the value becomes ``""``;
  - ``null``: the value becomes ``null``;
  - ``drop``: the field is removed (the path must end in a field name, not ``[]``);
  - ``hmac``: HMAC-SHA256 under the run's secret key, lower-case hex (64 characters); strings are
    hashed as UTF-8, other values as their compact JSON text, so equal inputs give equal pseudonyms;
  - ``mask``: every letter and digit becomes ``char`` (default ``*``), other characters stay, so
    length and shape are kept; ``keep_last: N`` leaves the last N characters;
  - ``redact``: regex replacements inside every string under the field (nested values included):
    ``patterns: [{"regex": "...", "replace": "[EMAIL]"} | {"builtin": "email" | "ipv4"}, ...]``;
    ``"hmac": true`` in a pattern replaces each match by its HMAC instead.

  ``null`` values are left alone by every action except ``drop`` (there is nothing to anonymize).
  ``mask`` and ``redact`` reach the strings inside objects and arrays; numbers and booleans are masked
  as their JSON text.

Rules apply in file order. :func:`load` validates everything (unknown action or option, bad path,
bad regex) before any object is read; :func:`RuleSet.apply` mutates a parsed record and returns the
paths it changed.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import json
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from s3lake import field_paths
from s3lake.errors import ConfigError
from s3lake.field_paths import Step

ACTIONS = ("blank", "null", "drop", "hmac", "mask", "redact")
BUILTIN_PATTERNS = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    "ipv4": r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b",
}
_OPTIONS = {
    "blank": set(), "null": set(), "drop": set(), "hmac": set(),
    "mask": {"char", "keep_last"}, "redact": {"patterns"},
}


class Secret:
    """Bytes that never show up in a repr, a log line or an exception message."""

    def __init__(self, value: bytes) -> None:
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


@dataclass(frozen=True)
class Pattern:
    regex: re.Pattern
    replace: str = "[REDACTED]"
    hmac: bool = False


@dataclass(frozen=True)
class Rule:
    path: str
    steps: tuple[Step, ...]
    action: str
    char: str = "*"
    keep_last: int = 0
    patterns: tuple[Pattern, ...] = field(default=())
    label: str = ""  # the rule's name in counts: its path, or "path (rule N)" when paths repeat


def parse_path(path: Any) -> tuple[Step, ...]:
    """``items[].note`` -> (Step("items", each=True), Step("note")); see :mod:`s3lake.field_paths`."""
    return field_paths.parse(path, "rule path")


def _pattern(spec: Any, where: str) -> Pattern:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: a pattern is an object with 'regex' or 'builtin'")
    unknown = set(spec) - {"regex", "builtin", "replace", "hmac"}
    if unknown:
        raise ConfigError(f"{where}: unknown pattern option(s) {sorted(unknown)}")
    if ("regex" in spec) == ("builtin" in spec):
        raise ConfigError(f"{where}: give exactly one of 'regex' or 'builtin'")
    if "builtin" in spec:
        if spec["builtin"] not in BUILTIN_PATTERNS:
            raise ConfigError(f"{where}: unknown builtin {spec['builtin']!r} (have {sorted(BUILTIN_PATTERNS)})")
        text = BUILTIN_PATTERNS[spec["builtin"]]
    else:
        text = spec["regex"]
        if not isinstance(text, str) or not text:
            raise ConfigError(f"{where}: 'regex' must be a non-empty string")
    try:
        compiled = re.compile(text)
    except re.error as exc:
        raise ConfigError(f"{where}: bad regex {text!r}: {exc}") from None
    replace = spec.get("replace", "[REDACTED]")
    if not isinstance(replace, str):
        raise ConfigError(f"{where}: 'replace' must be a string")
    try:  # the template is compiled eagerly: bad escapes and unknown groups raise here
        compiled.sub(replace, "")
    except (re.error, IndexError) as exc:
        raise ConfigError(f"{where}: bad 'replace' {replace!r}: {exc}") from None
    return Pattern(compiled, replace, bool(spec.get("hmac", False)))


def parse_rule(spec: Any, index: int) -> Rule:
    where = f"rule {index + 1}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: must be an object with 'path' and 'action'")
    action = spec.get("action")
    if action not in ACTIONS:
        raise ConfigError(f"{where}: unknown action {action!r} (use one of {', '.join(ACTIONS)})")
    unknown = set(spec) - {"path", "action", "comment"} - _OPTIONS[action]
    if unknown:
        raise ConfigError(f"{where} ({action}): unknown option(s) {sorted(unknown)}")
    steps = parse_path(spec.get("path"))
    where = f"{where} ({spec['path']})"
    if action == "drop" and steps[-1].each:
        raise ConfigError(f"{where}: drop needs a field name at the end of the path, not []")
    char, keep_last = spec.get("char", "*"), spec.get("keep_last", 0)
    if not isinstance(char, str) or len(char) != 1:
        raise ConfigError(f"{where}: 'char' must be one character")
    if not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 0:
        raise ConfigError(f"{where}: 'keep_last' must be a non-negative integer")
    patterns: tuple[Pattern, ...] = ()
    if action == "redact":
        raw = spec.get("patterns")
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{where}: redact needs a non-empty 'patterns' list")
        patterns = tuple(_pattern(p, f"{where} pattern {i + 1}") for i, p in enumerate(raw))
    return Rule(spec["path"], steps, action, char, keep_last, patterns, spec["path"])


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    key: Secret | None = None
    digest: str = ""  # sha256 of the rules file, for the default run id

    @property
    def needs_key(self) -> bool:
        return any(r.action == "hmac" or any(p.hmac for p in r.patterns) for r in self.rules)

    def with_key(self, key: Secret | None) -> RuleSet:
        if self.needs_key and not key:
            raise ConfigError("the rules use hmac but no key was given: pass --hmac-key-param NAME "
                              "(an SSM SecureString) or set S3LAKE_HMAC_KEY")
        return RuleSet(self.rules, key, self.digest)

    @property
    def labels(self) -> list[str]:
        return [r.label for r in self.rules]

    def apply(self, record: Any) -> list[str]:
        """Apply every rule to ``record`` in place; returns the labels of the rules that changed something."""
        changed: dict[str, int] = {}
        self.apply_counted(record, changed, {})
        return list(changed)

    def apply_counted(self, record: Any, changed: dict[str, int], matched: dict[str, int]) -> bool:
        """Apply every rule to ``record`` in place, adding per rule label the fields it changed and the
        fields its path reached (changed or not) to ``changed`` and ``matched``; True when any changed."""
        any_changed = False
        compiled = self.__dict__.get("_compiled") or self._compile()
        for label, plan, transform in compiled:
            reached, did = _walk(record, plan, transform)
            if reached:
                matched[label] = matched.get(label, 0) + reached
                if did:
                    changed[label] = changed.get(label, 0) + did
                    any_changed = True
        return any_changed

    def _compile(self) -> list[tuple[str, Plan, Transform]]:
        """Per rule, once: its label, its path's plan (:func:`plan`) and its transform."""
        compiled = [(rule.label, plan(rule.steps), _action(rule, self.key)) for rule in self.rules]
        object.__setattr__(self, "_compiled", compiled)
        return compiled


def parse_rules(doc: Any, digest: str = "") -> RuleSet:
    """A :class:`RuleSet` from a parsed rules document (every error is a :class:`ConfigError`)."""
    items = doc.get("rules") if isinstance(doc, dict) else doc
    if not isinstance(items, list) or not items:
        raise ConfigError("rules file must be a non-empty JSON list of rules (or {\"rules\": [...]})")
    parsed = [parse_rule(spec, i) for i, spec in enumerate(items)]
    paths = Counter(r.path for r in parsed)
    labelled = tuple(r if paths[r.path] == 1 else replace(r, label=f"{r.path} (rule {i + 1})")
                     for i, r in enumerate(parsed))
    return RuleSet(labelled, None, digest)


def load(location: str) -> RuleSet:
    """Read and validate a rules file from a local path or an ``s3://`` URL."""
    from s3lake import aws  # the I/O edge: the rules themselves need neither boto3 nor S3

    try:
        if location.startswith(("s3://", "s3a://", "s3n://")):
            bucket, key = aws.split_s3_url(location)
            raw = aws.s3().get_object(Bucket=bucket, Key=key)["Body"].read()
        else:
            with open(location, "rb") as fh:
                raw = fh.read()
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - one clear line
        raise ConfigError(f"cannot read rules file {location}: {aws.error_code(exc)}: {exc}") from None
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"rules file {location} is not valid JSON: {exc}") from None
    try:
        return parse_rules(doc, hashlib.sha256(raw).hexdigest())
    except ConfigError as exc:
        raise ConfigError(f"rules file {location}: {exc}") from None


def hmac_key(param: str | None, environ: Mapping[str, str]) -> Secret | None:
    """The HMAC key: the SSM SecureString ``param`` (decrypted), else ``S3LAKE_HMAC_KEY``, else None."""
    from s3lake import aws

    if param:
        try:
            value = aws.client("ssm").get_parameter(Name=param, WithDecryption=True)["Parameter"]["Value"]
        except Exception as exc:  # noqa: BLE001 - never include the value, only the error code
            raise ConfigError(f"cannot read HMAC key from SSM parameter {param}: {aws.error_code(exc)}") from None
        if not value:
            raise ConfigError(f"SSM parameter {param} is empty")
        return Secret(value.encode("utf-8"))
    value = environ.get("S3LAKE_HMAC_KEY")
    return Secret(value.encode("utf-8")) if value else None


# ------------------------------------------------------------------------------------------ applying

# A leaf transform: (value) -> (new value, changed). DROP as new value removes the field.
DROP = object()
Transform = Callable[[Any], "tuple[Any, bool]"]


_NOTHING = (0, 0)
# A path's readings worked out once (per rule, not per record): [(key, each, plan of the rest or None)].
Plan = list


def plan(steps: Sequence[Step]) -> Plan:
    """Every key the first steps of ``steps`` can name (:func:`s3lake.field_paths.readings`), longest first,
    each with the plan of the steps after it."""
    return [(key, each, plan(steps[used:]) if used < len(steps) else None)
            for key, each, used in field_paths.readings(_EVERY_KEY, steps)]


class _EveryKey:
    """A key set holding every name: :func:`plan` wants every reading, not those of one record."""

    def __contains__(self, key: object) -> bool:
        return True


_EVERY_KEY = _EveryKey()


def _walk(node: Any, path: Plan, transform: Transform) -> tuple[int, int]:
    """(fields reached, fields changed) under ``node`` along ``path``, every reading of a dotted run included."""
    if not isinstance(node, dict):
        return _NOTHING
    if len(path) == 1:  # one reading (no dotted run): the common case, kept cheap
        key, each, rest = path[0]
        return _walk_key(node, key, each, rest, transform) if key in node else _NOTHING
    reached = changed = 0
    for key, each, rest in path:  # the readings name different keys: one's change cannot hide another
        if key in node:
            r, c = _walk_key(node, key, each, rest, transform)
            reached += r
            changed += c
    return reached, changed


def _walk_key(node: dict, key: str, each: bool, rest: Plan | None, transform: Transform) -> tuple[int, int]:
    if each:
        items = node[key]
        if not isinstance(items, list):
            return 0, 0
        reached = changed = 0
        for i, item in enumerate(items):
            if rest:
                r, c = _walk(item, rest, transform)
                reached += r
                changed += c
            else:
                reached += 1
                new, did = transform(item)
                if did:
                    items[i] = new
                    changed += 1
        return reached, changed
    if rest:
        return _walk(node[key], rest, transform)
    new, did = transform(node[key])
    if did:
        if new is DROP:
            del node[key]
        else:
            node[key] = new
    return 1, int(did)


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def pseudonym(key: Secret, value: Any) -> str:
    """Keyed HMAC-SHA256 (hex) of a value: strings as UTF-8, anything else as compact sorted JSON."""
    text = value if isinstance(value, str) else _json_text(value)
    return _hmac.new(key.reveal(), text.encode("utf-8"), hashlib.sha256).hexdigest()


def mask_text(text: str, char: str = "*", keep_last: int = 0) -> str:
    cut = len(text) - keep_last if keep_last else len(text)
    head = "".join(char if c.isalnum() else c for c in text[:max(cut, 0)])
    return head + text[max(cut, 0):]


def _strings(value: Any, fn: Callable[[str], str]) -> tuple[Any, bool]:
    """Apply ``fn`` to every string inside ``value`` (numbers and booleans as their JSON text)."""
    if value is None:
        return value, False
    if isinstance(value, str):
        new = fn(value)
        return new, new != value
    if isinstance(value, dict):
        changed = False
        for k, v in value.items():
            new, did = _strings(v, fn)
            if did:
                value[k] = new
                changed = True
        return value, changed
    if isinstance(value, list):
        changed = False
        for i, v in enumerate(value):
            new, did = _strings(v, fn)
            if did:
                value[i] = new
                changed = True
        return value, changed
    text = _json_text(value)  # number or boolean: only replaced (by a string) when the text changes
    new_text = fn(text)
    return (new_text, True) if new_text != text else (value, False)


def _action(rule: Rule, key: Secret | None) -> Transform:
    if rule.action == "blank":
        return lambda v: ("", v is not None and v != "")
    if rule.action == "null":
        return lambda v: (None, v is not None)
    if rule.action == "drop":
        return lambda v: (DROP, True)
    if rule.action == "hmac":
        if key is None:
            raise ConfigError(f"rule {rule.path}: hmac needs a key")
        return lambda v: (None, False) if v is None else (pseudonym(key, v), True)
    if rule.action == "mask":
        return lambda v: _strings(v, lambda s: mask_text(s, rule.char, rule.keep_last))

    def redact(text: str) -> str:
        for p in rule.patterns:
            if p.hmac:
                if key is None:
                    raise ConfigError(f"rule {rule.path}: hmac needs a key")
                text = p.regex.sub(lambda m: pseudonym(key, m.group(0)), text)
            else:
                text = p.regex.sub(p.replace, text)
        return text

    return lambda v: _strings(v, redact)
