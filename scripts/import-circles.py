#!/usr/bin/env python3
"""Import circles between the top-level modules of each library crate.

For every crate named on the command line (default: every crate of the workspace but the proto and fuzz ones),
reads the `.rs` files under `src/`, drops comments, string literals and `#[cfg(test)]` items
(and the files of `#[cfg(test)] mod x;`), and collects the module paths the code names:
`crate::...` (including grouped `use crate::{a, b::C}`), `super::...` and `self::...`,
resolved against the file's place in the module tree, with names re-exported by `lib.rs`
(`pub use a::X;`) resolved to their module. Each path gives an edge from the file's
top-level module to the top-level module it names. Prints each crate's strongly connected
components of more than one module (its import circles) with one edge list per circle, and
exits 1 if any crate has one.

Usage: scripts/import-circles.py [crate-dir ...]   (from the workspace root)
"""

import os
import re
import sys
from collections import defaultdict

DEFAULT_CRATES = [
    "shuffle-service",
    "staging-server",
    "staging-server/api",
    "staging-server/client",
    "staging-server/bundle",
    "spark-protocol",
    "service-runtime",
    "kubebed",
    "loadtest",
]
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(text):
    """Replaces comments and string/char literals by spaces (newlines kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:]) and (i == 0 or not re.match(r"\w", text[i - 1])):
            m = re.match(r'r(#*)"', text[i:])
            close = '"' + m.group(1)
            j = text.find(close, i + len(m.group(0)))
            j = n if j < 0 else j + len(close)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "'":
            # A char literal ('a', '\n', '\u{..}'), not a lifetime ('a).
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def skip_item(text, i):
    """Index just past the item starting at `i`: up to its `;` or its balanced `{...}`."""
    n = len(text)
    depth = 0
    while i < n:
        c = text[i]
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == ";" and depth == 0:
            return i + 1
        elif c == "{" and depth == 0:
            braces, j = 1, i + 1
            while j < n and braces:
                braces += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            return j
        i += 1
    return n


CFG_TEST = re.compile(r"#\[cfg\(\s*test\s*\)\]")


def drop_test_items(text):
    """Blanks `#[cfg(test)]` items; returns (text, names of `#[cfg(test)] mod x;`)."""
    test_mods = []
    while True:
        m = CFG_TEST.search(text)
        if not m:
            return text, test_mods
        # Further attributes between `#[cfg(test)]` and the item.
        k = m.end()
        while True:
            a = re.match(r"\s*#\[", text[k:])
            if not a:
                break
            k = skip_item_brackets(text, k + a.end() - 1)
        decl = re.match(r"\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*;", text[k:])
        if decl:
            test_mods.append(decl.group(1))
        end = skip_item(text, k)
        text = text[: m.start()] + re.sub(r"[^\n]", " ", text[m.start():end]) + text[end:]


def skip_item_brackets(text, i):
    """Index past the balanced `[...]` starting at `i`."""
    depth, j = 0, i
    while j < len(text):
        if text[j] == "[":
            depth += 1
        elif text[j] == "]":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return j


def parse_use_tree(s, i):
    """Parses a use tree at s[i:]; returns (list of paths as segment lists, end index)."""
    paths = []
    segs = []
    n = len(s)
    while i < n:
        while i < n and s[i].isspace():
            i += 1
        if i < n and s[i] == "{":
            i += 1
            while True:
                while i < n and (s[i].isspace() or s[i] == ","):
                    i += 1
                if i >= n or s[i] == "}":
                    i += 1
                    break
                sub, i = parse_use_tree(s, i)
                paths.extend(segs + p for p in sub)
            return paths, i
        if i < n and s[i] == "*":
            return [segs + ["*"]], i + 1
        m = re.match(IDENT, s[i:])
        if not m:
            return [segs] if segs else [], i
        segs = segs + [m.group(0)]
        i += m.end()
        m2 = re.match(r"\s*::\s*", s[i:])
        if m2:
            i += m2.end()
            continue
        m3 = re.match(r"\s+as\s+" + IDENT, s[i:])
        if m3:
            i += m3.end()
        return [segs], i
    return [segs] if segs else [], i


def module_path(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"], ["main"]):
        return []
    return rel


def resolve(mod, segs):
    """Absolute module path (segment list from the crate root) of a path seen in `mod`."""
    if not segs:
        return None
    if segs[0] == "crate":
        return segs[1:]
    if segs[0] in ("self", "super"):
        base = list(mod)
        rest = list(segs)
        if rest[0] == "self":
            rest = rest[1:]
        while rest and rest[0] == "super":
            if not base:
                return None
            base = base[:-1]
            rest = rest[1:]
        return base + rest
    return None


def crate_files(src):
    """The non-test `.rs` files of the crate (files of `#[cfg(test)] mod x;` dropped)."""
    files = {}
    excluded = set()
    for root, _, names in os.walk(src):
        for name in sorted(names):
            if name.endswith(".rs"):
                path = os.path.join(root, name)
                with open(path, encoding="utf-8") as f:
                    text, test_mods = drop_test_items(strip_comments_and_strings(f.read()))
                files[path] = text
                here = os.path.dirname(path) if name in ("mod.rs", "lib.rs", "main.rs") else path[:-3]
                for t in test_mods:
                    excluded.add(os.path.join(here, t + ".rs"))
                    excluded.add(os.path.join(here, t, "mod.rs"))
    # Files under an excluded module directory are test code too.
    def is_test(p):
        if p in excluded:
            return True
        return any(p.startswith(e[: -len("/mod.rs")] + os.sep) for e in excluded if e.endswith("/mod.rs"))

    return {p: t for p, t in files.items() if not is_test(p)}


PATH_START = re.compile(r"(?<![\w$])(crate|super|self)\s*::")
USE_PREFIX = re.compile(r"\buse\s+$")


def collect_edges(crate):
    src = os.path.join(crate, "src")
    files = crate_files(src)
    top = sorted({module_path(src, p)[0] for p in files if module_path(src, p)})
    lib = files.get(os.path.join(src, "lib.rs"), "")
    # Names re-exported at the crate root: `pub use a::X;` / `pub use a::{X, Y};`.
    reexport = {}
    for m in re.finditer(r"\bpub\s+use\s+", lib):
        for segs in parse_use_tree(lib, m.end())[0]:
            if len(segs) >= 2 and segs[0] in top:
                reexport[segs[-1]] = segs[0]
            elif len(segs) >= 3 and segs[0] in ("crate", "self") and segs[1] in top:
                reexport[segs[-1]] = segs[1]
    edges = defaultdict(set)  # (from, to) -> {"file:line"}
    for path, text in files.items():
        mod = module_path(src, path)
        if not mod:
            continue  # lib.rs / main.rs: the root imports everything by design
        for m in PATH_START.finditer(text):
            before = text[max(0, m.start() - 40): m.start()]
            if re.search(r"\bpub\s*\(\s*in\s+$", before):
                continue  # visibility: `pub(in crate::x)`, `pub(crate)`/`pub(super)`
            for segs in parse_use_tree(text, m.start())[0]:
                target = resolve(mod, segs)
                if not target:
                    continue
                first = target[0]
                if first not in top:
                    first = reexport.get(first)
                    if first is None:
                        continue
                if first != mod[0]:
                    line = text.count("\n", 0, m.start()) + 1
                    edges[(mod[0], first)].add(f"{os.path.relpath(path, crate)}:{line}")
    return top, edges


def sccs(nodes, adj):
    """Tarjan's strongly connected components."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(adj[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            visit(v)
    return out


def main(argv):
    crates = argv[1:] or DEFAULT_CRATES
    found = False
    for crate in crates:
        top, edges = collect_edges(crate)
        adj = defaultdict(set)
        for a, b in edges:
            adj[a].add(b)
        circles = [c for c in sccs(top, adj) if len(c) > 1]
        if not circles:
            print(f"{crate}: no import circles")
            continue
        found = True
        for comp in circles:
            print(f"{crate}: circle {{{', '.join(comp)}}}")
            members = set(comp)
            for (a, b), where in sorted(edges.items()):
                if a in members and b in members:
                    sites = sorted(where)
                    more = f" (+{len(sites) - 3} more)" if len(sites) > 3 else ""
                    print(f"    {a} -> {b}: {', '.join(sites[:3])}{more}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
