"""The spec's error shapes (http-api.md §1.4): ApiError family -> response bytes.

* ``api``: always JSON ``{"message": ...}``;
* ``negotiated``: JSON when ``application/json`` is in Accept, else an HTML or plain document;
* ``submit``: the message is the HTTP reason phrase (twine shows it), body per Accept;
* ``framework``: generic errors (unmatched route, permission), HTML vs JSON by Accept matching.
"""
from __future__ import annotations

import json
from html import escape
from typing import Literal

from twisted.web.http import RESPONSES
from twisted.web.iweb import IRequest

from devpitx.web.negotiate import accept_header, json_preferred, quality

ErrorShape = Literal["api", "negotiated", "submit", "framework"]
JSON_TYPE = b"application/json"


class ApiError(Exception):
    """Raised by handlers and model code; rendered by the error handler in root.py."""

    shape: ErrorShape = "api"

    def __init__(self, code: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


class NegotiatedError(ApiError):
    shape = "negotiated"


class SubmitError(ApiError):
    shape = "submit"


class FrameworkError(ApiError):
    shape = "framework"


def reason_phrase(message: str) -> bytes:
    """A single-line Latin-1 reason phrase (status lines cannot carry anything else)."""
    line = " ".join(message.split())
    return line.encode("latin-1", errors="replace")


def status_text(code: int) -> str:
    return RESPONSES.get(code, b"Error").decode("latin-1")


def _generic_document(request: IRequest, code: int, message: str, title: str) -> bytes:
    accept = accept_header(request)
    if accept is None or quality(accept, "text/html") > 0:
        request.setHeader(b"content-type", b"text/html; charset=UTF-8")
        return (
            f"<!DOCTYPE html><html><head><title>{code} {escape(title)}</title></head>"
            f"<body><h1>{code} {escape(title)}</h1><p>{escape(message)}</p></body></html>\n"
        ).encode()
    request.setHeader(b"content-type", b"text/plain; charset=UTF-8")
    return f"{code} {title}\n\n{message}\n".encode()


def _json(request: IRequest, payload: dict[str, object]) -> bytes:
    request.setHeader(b"content-type", JSON_TYPE)
    return json.dumps(payload, indent=2).encode()


def render_error(request: IRequest, code: int, message: str, shape: ErrorShape = "api",
                 headers: dict[str, str] | None = None) -> bytes:
    for name, value in (headers or {}).items():
        request.setHeader(name.encode(), value.encode())
    if shape == "submit":
        request.setResponseCode(code, reason_phrase(message))
        if _prefers_json(request):
            return _json(request, {"message": message, "code": code, "title": message})
        return _generic_document(request, code, f"{code} {message}", message)
    request.setResponseCode(code)
    if shape == "api" or (shape == "negotiated" and json_preferred(request)):
        return _json(request, {"message": message})
    if shape == "framework" and _prefers_json(request):
        return _json(request, {"message": message, "code": code, "title": status_text(code)})
    return _generic_document(request, code, message, status_text(code))


def _prefers_json(request: IRequest) -> bool:
    accept = accept_header(request)
    if accept is None:
        return False
    # Ties go to HTML, as in the reference's framework errors.
    return quality(accept, "application/json") > quality(accept, "text/html")
