"""Refused: the one exception model code raises when a request cannot be honoured.

It carries the HTTP status and the exact message of the spec; the web layer
chooses the error shape (api, negotiated, submit) for its route.
"""
from __future__ import annotations


class Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
