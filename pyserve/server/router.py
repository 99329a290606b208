"""Paths to handlers."""

from __future__ import annotations

import re

from pyserve.server.messages import Handler


class Router:
    """Paths to handlers. A segment ``{name}`` captures one path segment into ``match_info``.

    Patterns are tried in the order they were added: add the hot path (infer) first. Paths come
    percent-decoded.
    """

    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Handler]] = {}
        self._patterns: list[tuple[re.Pattern[str], dict[str, Handler]]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        """Routes ``method`` ("*" for any) on ``pattern`` to ``handler``; GET routes answer HEAD too."""
        methods = [method, "HEAD"] if method == "GET" else [method]
        if "{" not in pattern:
            table = self._exact.setdefault(pattern, {})
        else:
            regex = re.compile("".join(
                f"(?P<{part[1:-1]}>[^/]+)" if part.startswith("{") else re.escape(part)
                for part in re.split(r"({[^}/]+})", pattern)) + r"\Z")
            for row_regex, row_table in self._patterns:
                if row_regex.pattern == regex.pattern:
                    table = row_table
                    break
            else:
                table = {}
                self._patterns.append((regex, table))
        for m in methods:
            table.setdefault(m, handler)

    def resolve(self, method: str, path: str) -> tuple[Handler | None, dict[str, str], list[str]]:
        """The handler and captures for ``method path``; no handler: the methods the path allows."""
        table = self._exact.get(path)
        captures: dict[str, str] = {}
        if table is None:
            for regex, row_table in self._patterns:
                match = regex.match(path)
                if match is not None:
                    table = row_table
                    captures = match.groupdict()
                    break
            else:
                return None, captures, []
        handler = table.get(method) or table.get("*")
        return handler, captures, ([] if handler else sorted(table))
