"""Field paths into JSON records and Spark schemas: one grammar for rule paths, ``--timestamp-field`` and
``--dedup-key``, so that any name JSON allows can be reached.

Grammar::

    path    := segment ("." segment)*
    segment := name ["[]"]            "[]": every element of the array under name
    name    := bare | quoted
    bare    := one or more characters other than . [ ] `
    quoted  := "`" (any character; a backtick is written ``) "`"

``user.email``, ``items[].note``, ``tags[]``; ```id.orig_h``` names the single key ``id.orig_h``;
```a``b``` the key ``a`b``. A bare dotted run also reaches literal keys: ``id.orig_h`` reads as the key
``id.orig_h`` where a record (or schema) holds it, as ``id`` -> ``orig_h`` where that exists, and as both
where both do (:func:`readings`). Pure: no Spark, no AWS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Container, Iterator, Sequence

from s3lake.errors import ConfigError


@dataclass(frozen=True)
class Step:
    name: str
    each: bool = False  # name[]: every element of the array under name
    quoted: bool = False  # `name`: exactly this key, never joined with its neighbours


def parse(path: object, what: str = "path") -> tuple[Step, ...]:
    """``a.`b.c`[].d`` -> (Step("a"), Step("b.c", each=True, quoted=True), Step("d")); ConfigError (one line,
    naming ``what``) for anything else."""
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{what} must be a non-empty string, got {path!r}")
    steps: list[Step] = []
    i, n = 0, len(path)
    while True:
        if i < n and path[i] == "`":
            j, name = i + 1, []
            while True:
                k = path.find("`", j)
                if k < 0:
                    raise ConfigError(f"bad {what} {path!r}: unclosed backtick at character {i + 1}")
                name.append(path[j:k])
                if path.startswith("``", k):
                    name.append("`")
                    j = k + 2
                    continue
                i = k + 1
                break
            text, quoted = "".join(name), True
            if not text:
                raise ConfigError(f"bad {what} {path!r}: empty name at character {i - 1}")
        else:
            j = i
            while j < n and path[j] not in ".[]`":
                j += 1
            text, quoted = path[i:j], False
            if not text:
                raise ConfigError(f"bad {what} {path!r}: empty name at character {i + 1} "
                                  "(use name, name[], a.b[].c or `a.b` for a key holding dots)")
            i = j
        each = path.startswith("[]", i)
        if each:
            i += 2
        steps.append(Step(text, each, quoted))
        if i == n:
            return tuple(steps)
        if path[i] != ".":
            raise ConfigError(f"bad {what} {path!r}: unexpected {path[i]!r} at character {i + 1} "
                              "(use name, name[], a.b[].c or `a.b` for a key holding dots)")
        i += 1
        if i == n:
            raise ConfigError(f"bad {what} {path!r}: ends with '.'")


def quote(name: str) -> str:
    """``name`` as one path segment (and as a Spark SQL identifier): backticks, inner ones doubled."""
    return "`" + name.replace("`", "``") + "`"


def split_list(text: str, what: str) -> list[str]:
    """``a,`b,c`,d`` -> ["a", "`b,c`", "d"]: commas inside backticks belong to the name."""
    items, current, quoted = [], [], False
    for ch in text:
        if ch == "`":
            quoted = not quoted
        if ch == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quoted:
        raise ConfigError(f"{what} {text!r}: unclosed backtick")
    items.append("".join(current))
    return [i.strip() for i in items if i.strip()]


def readings(keys: Container[str], steps: Sequence[Step]) -> Iterator[tuple[str, bool, int]]:
    """The ways the first steps of ``steps`` name one key of ``keys`` (a dict or a list of names): (key,
    each, steps used). Consecutive bare steps join with '.', a step with ``[]`` or a quoted one ends a join;
    the longest join comes first."""
    found = []
    name = ""
    for used, step in enumerate(steps, 1):
        if step.quoted:
            if used == 1:
                found.append((step.name, step.each, 1))
            break
        name = step.name if used == 1 else f"{name}.{step.name}"
        found.append((name, step.each, used))
        if step.each or used < len(steps) and steps[used].quoted:
            break
    for key, each, used in reversed(found):
        if key in keys:
            yield key, each, used


def text(steps: Sequence[Step]) -> str:
    """The path written back, quoting names that need it."""
    def one(step: Step) -> str:
        bare = step.name and not any(c in step.name for c in ".[]`")
        return (step.name if bare and not step.quoted else quote(step.name)) + ("[]" if step.each else "")

    return ".".join(one(s) for s in steps)
