"""The IR text format (DESIGN.md Contract 1) on the Python side: a small node model, its printer,
and a reader for the module text the compiler prints back.

Only what the FX translation needs: the compiler itself (parser, verifier, passes) is C++.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

# A dimension: an int, or a symbol name (the token count T, or a sympy symbol of a dynamic shape).
Dim = Union[int, str]
AttrValue = Union[int, float, bool, str, "Name", List["AttrValue"]]

DTYPES = ("bf16", "f16", "f32", "f8e4m3", "i32")


class Name(str):
    """An attribute value written bare (`to = f32`), as opposed to a "string"."""


@dataclasses.dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: Tuple[Dim, ...]

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


@dataclasses.dataclass
class Node:
    op: str
    results: List[str]
    operands: List[str]
    attrs: Dict[str, AttrValue] = dataclasses.field(default_factory=dict)
    # Declared result types (`: bf16[T, 64]`): required for opaque, checked by the parser for
    # every other op. None: not declared.
    types: Optional[List[TensorType]] = None


@dataclasses.dataclass
class Func:
    name: str
    params: List[Tuple[str, TensorType]]
    nodes: List[Node]
    outputs: List[str]


def format_attr(value: AttrValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Name):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"attribute value {value} is not finite")
        # repr is the shortest text that reads back as the same double.
        text = repr(value)
        return text if ("e" in text or "." in text) else text + ".0"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_attr(v) for v in value) + "]"
    raise TypeError(f"cannot write attribute value {value!r}")


def print_func(func: Func) -> str:
    params = ", ".join(f"%{name}: {ty}" for name, ty in func.params)
    lines = [f"func @{func.name}({params}) {{"]
    for node in func.nodes:
        text = f"  {', '.join('%' + r for r in node.results)} = {node.op}("
        text += ", ".join("%" + o for o in node.operands) + ")"
        if node.attrs:
            text += " {" + ", ".join(f"{k} = {format_attr(v)}" for k, v in node.attrs.items()) + "}"
        if node.types:
            text += " : " + ", ".join(str(t) for t in node.types)
        lines.append(text)
    lines.append("  return " + ", ".join("%" + o for o in func.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- reading compiled text

_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")'
    # A product dim with a constant factor (2*s0), read as a name, ahead of the numbers.
    r"|(?P<prod>\d+(?:\*[A-Za-z_][A-Za-z0-9_.]*)+)"
    r'|(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf|nan)'
    # A name, or a dim the compiler writes as one: a product of symbols (s0*s1) or a padded
    # dim (pad4(T), pad4(s0*s1)).
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_.]*(?:\*[A-Za-z_][A-Za-z0-9_.]*)*(?:\([A-Za-z0-9_.*]*\))?)"
    r"|(?P<punct>[\[\],=]))"
)


def _parse_attr_text(text: str) -> Dict[str, AttrValue]:
    tokens: List[Tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"cannot read attributes at {text[pos:]!r}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        pos = m.end()

    at = 0

    def value() -> AttrValue:
        nonlocal at
        kind, tok = tokens[at]
        at += 1
        if kind == "punct" and tok == "[":
            items: List[AttrValue] = []
            if tokens[at] == ("punct", "]"):
                at += 1
                return items
            while True:
                items.append(value())
                kind, tok = tokens[at]
                at += 1
                if tok == "]":
                    return items
                if tok != ",":
                    raise ValueError(f"expected ',' or ']' in {text!r}")
        if kind == "str":
            return bytes(tok[1:-1], "utf-8").decode("unicode_escape")
        if kind == "num":
            return float(tok) if any(c in tok for c in ".eEn") else int(tok)
        if kind == "prod":
            return Name(tok)
        if kind == "name":
            if tok in ("true", "false"):
                return tok == "true"
            return Name(tok)
        raise ValueError(f"unexpected {tok!r} in {text!r}")

    attrs: Dict[str, AttrValue] = {}
    while at < len(tokens):
        kind, key = tokens[at]
        if kind != "name" or tokens[at + 1] != ("punct", "="):
            raise ValueError(f"expected 'name =' in {text!r}")
        at += 2
        attrs[key] = value()
        if at < len(tokens):
            if tokens[at] != ("punct", ","):
                raise ValueError(f"expected ',' in {text!r}")
            at += 1
    return attrs


def _parse_type(text: str) -> TensorType:
    m = re.fullmatch(r"\s*(\w+)\[(.*)\]\s*", text)
    if not m:
        raise ValueError(f"cannot read type {text!r}")
    dims: List[Dim] = []
    for d in (x.strip() for x in m.group(2).split(",") if x.strip()):
        dims.append(int(d) if re.fullmatch(r"-?\d+", d) else d)
    return TensorType(m.group(1), tuple(dims))


def _strip_comment(line: str) -> str:
    in_string = False
    for i, c in enumerate(line):
        if c == '"' and (i == 0 or line[i - 1] != "\\"):
            in_string = not in_string
        elif c == "#" and not in_string:
            return line[:i]
    return line


def _values(text: str) -> List[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    for v in names:
        if not v.startswith("%"):
            raise ValueError(f"expected a value name, got {v!r}")
    return [v[1:] for v in names]


def parse_module(text: str) -> List[Func]:
    """Reads module text as the compiler prints it (one statement per line)."""
    funcs: List[Func] = []
    current: Optional[Func] = None
    header = ""
    for raw in text.splitlines():
        line = _strip_comment(raw).strip()
        if not line:
            continue
        if current is None:
            header += " " + line
            if not header.rstrip().endswith("{"):
                continue
            m = re.fullmatch(r"\s*func\s+@([\w.]+)\s*\((.*)\)\s*\{\s*", header)
            if not m:
                raise ValueError(f"cannot read func header {header!r}")
            params = []
            for p in _split_top(m.group(2)):
                name, ty = p.split(":", 1)
                params.append((name.strip()[1:], _parse_type(ty)))
            current = Func(m.group(1), params, [], [])
            header = ""
            continue
        if line == "}":
            funcs.append(current)
            current = None
            continue
        if line.startswith("return"):
            current.outputs = _values(line[len("return"):])
            continue
        m = re.fullmatch(r"(.*?)=\s*([A-Za-z_][\w.]*)\s*\((.*?)\)\s*(?:\{(.*)\})?"
                         r"\s*(?::\s*([^{}]*))?", line)
        if not m:
            raise ValueError(f"cannot read statement {line!r}")
        attrs = _parse_attr_text(m.group(4)) if m.group(4) else {}
        types = [_parse_type(t) for t in _split_top(m.group(5))] if m.group(5) else None
        current.nodes.append(Node(m.group(2), _values(m.group(1)), _values(m.group(3)), attrs,
                                  types))
    if current is not None or header.strip():
        raise ValueError("module text ends inside a func")
    return funcs


def _split_top(text: str) -> Sequence[str]:
    """Splits on commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if text[start:].strip():
        parts.append(text[start:])
    return [p for p in parts if p.strip()]
