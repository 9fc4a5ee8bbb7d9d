"""Request inspection shared by every area: Accept matching, installer detection, outside URL, relative links.

http-api.md §1.5 defines three negotiation mechanisms; each has one function here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, urlsplit

from twisted.web.iweb import IRequest

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
_INSTALLER_UA = re.compile(r"([^ ]* )*(distribute|setuptools|pip|pex|uv)/.*")
# Characters generated URLs leave alone (http-api.md §1.1); '+' in particular stays literal.
URL_SAFE = "/!$&'()*,;=:@~+"


def header(request: IRequest, name: bytes) -> str | None:
    value = request.getHeader(name)
    if value is None:
        return None
    return value if isinstance(value, str) else value.decode("latin-1")


def accept_header(request: IRequest) -> str | None:
    return header(request, b"accept")


@lru_cache(maxsize=256)
def parse_accept(accept: str) -> tuple[tuple[str, float], ...]:
    entries = []
    for item in accept.split(","):
        parts = [p.strip() for p in item.split(";")]
        media = parts[0].lower()
        if not media:
            continue
        q = 1.0
        for param in parts[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        entries.append((media, q))
    return tuple(entries)


def quality(accept: str, media_type: str) -> float:
    """The client's q for ``media_type``: the most specific matching range wins."""
    main, _, sub = media_type.partition("/")
    best_specificity = -1
    best_q = 0.0
    for media, q in parse_accept(accept):
        m_main, _, m_sub = media.partition("/")
        if media == media_type:
            specificity = 2
        elif m_main == main and m_sub == "*":
            specificity = 1
        elif media == "*/*" or media == "*":
            specificity = 0
        else:
            continue
        if specificity > best_specificity:
            best_specificity, best_q = specificity, q
    return best_q


def select_view(request: IRequest, offers: tuple[str, ...]) -> str | None:
    """Rule 1.5a: the offer with the highest q > 0; ties go to the earlier offer; no Accept = first offer."""
    accept = accept_header(request)
    if accept is None:
        return offers[0] if offers else None
    best: str | None = None
    best_q = 0.0
    for offer in offers:
        q = quality(accept, offer)
        if q > best_q:
            best, best_q = offer, q
    return best


def json_preferred(request: IRequest) -> bool:
    """Rule 1.5b: the plain substring test of the reference."""
    accept = accept_header(request)
    return accept is not None and "application/json" in accept


def simple_format(request: IRequest) -> str:
    """Rule 1.5c: 'json' or 'html' for +simple pages (ties and no Accept -> html)."""
    accept = accept_header(request)
    if accept is None:
        return "html"
    return _simple_format_for(accept)


# Asked several times per simple-page request; installers send the same few values over and over.
@lru_cache(maxsize=256)
def _simple_format_for(accept: str) -> str:
    return "json" if quality(accept, SIMPLE_JSON) > quality(accept, "text/html") else "html"


def is_installer(request: IRequest) -> bool:
    agent = header(request, b"user-agent")
    return agent is not None and _installer_agent(agent)


@lru_cache(maxsize=256)
def _installer_agent(agent: str) -> bool:
    return _INSTALLER_UA.match(agent) is not None


@dataclass(frozen=True)
class OutsideUrl:
    base: str      # scheme://host[:port][/prefix], no trailing slash
    prefix: str    # mount prefix path, "" or "/devpi"

    def url(self, path: str) -> str:
        """Absolute URL for a server path like '/alice/dev/+simple/'."""
        return self.base + quote(path, safe=URL_SAFE)


def outside_url(request: IRequest, configured: str | None) -> OutsideUrl:
    base = header(request, b"x-outside-url") or configured
    if not base:
        scheme = "https" if request.isSecure() else "http"
        host = header(request, b"host") or _host_of(request)
        base = f"{scheme}://{host}"
    return _parsed_outside_url(base)


@lru_cache(maxsize=256)
def _parsed_outside_url(base: str) -> OutsideUrl:
    # Every request asks (at least twice); clients send the same few bases over and over.
    base = base.rstrip("/")
    return OutsideUrl(base=base, prefix=urlsplit(base).path.rstrip("/"))


def _host_of(request: IRequest) -> str:
    host = request.getHost()
    return f"{host.host}:{host.port}"


def relative_href(request_path: str, target: str) -> str:
    """The relative reference from ``request_path`` to ``target`` (http-api.md §1.7)."""
    target_path, hash_mark, fragment = target.partition("#")
    base = request_path.split("/")
    parts = target_path.split("/")
    i = 0
    while i < len(base) and i < len(parts) and base[i] == parts[i]:
        i += 1
    ups = len(base) - i - 1
    href = "../" * ups + "/".join(parts[i:])
    href = quote(href, safe=URL_SAFE)
    return href + (hash_mark + fragment if hash_mark else "")
