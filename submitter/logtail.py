"""Reading an attempt's output: what of a log's kept tail has not been shown yet."""

from __future__ import annotations


def unseen_tail(shown: str, tail: str) -> str:
    """The lines of ``tail`` (the end of a log) that ``shown`` (its beginning) does not end with."""
    tail_lines = tail.splitlines()
    shown_lines = shown.splitlines()
    for k in range(min(len(shown_lines), len(tail_lines)), 0, -1):
        first, *rest = tail_lines[:k]  # the tail's first line may be cut: compare its end only
        start = len(shown_lines) - k
        if shown_lines[start].endswith(first) and shown_lines[start + 1:] == rest:
            return "\n".join(tail_lines[k:])
    return tail
