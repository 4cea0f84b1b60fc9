"""Full-text search: what a user types, as an FTS5 MATCH expression that cannot be a syntax error.

The index (schema.MIGRATIONS[5], `messages_fts`) tokenizes subject and body with unicode61: case and
accents do not matter, and punctuation separates words. Word endings do (no stemming: porter would
turn the prefix `pay*` into `pai*` and miss "payment"): `deploy*` finds deployed and deploying.

FTS5's own query language (AND/OR/NOT, NEAR, column filters, parentheses) would turn user text such as
`what's "up` or `NOT` into syntax errors, so this takes a smaller language and quotes every part of it:
each word becomes a quoted term and each "quoted phrase" a quoted phrase; a `*` right after either
makes its last word a prefix. Every part must match (AND), in the subject or the body.
"""

from __future__ import annotations

import re

# A "phrase" (a quote left open runs to the end), or a run of anything but spaces and quotes; then an optional *.
_PART = re.compile(r'"([^"]*)"?(\*?)|([^\s"]+)')

# Rank: bm25 with a word in the subject counting twice as much as one in the body; lower is better.
RANK = "bm25(messages_fts, 2.0, 1.0)"
# A search ranks its newest RANKED matches (those that pass the other filters): bm25 costs a few us a match,
# and a word most messages hold would cost 100k messages' search 0.2 to 0.5 s (measured: perf/bench_search.py).
RANKED = 1000


def match_expression(text: str) -> str | None:
    """The MATCH expression for a search; None when the text holds no word (no letter or digit) at all."""
    if not any(c.isalnum() for c in text):
        return None
    parts = []
    for phrase, star, word in _PART.findall(text):
        if word:
            star = "*" if word.endswith("*") else ""
            phrase = word.rstrip("*")
        if any(c.isalnum() for c in phrase):  # "" or "-" hold no token: FTS5 would ignore them anyway
            parts.append('"' + phrase.replace('"', '""') + '"' + star)
    return " ".join(parts)
