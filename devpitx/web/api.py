"""The JSON API's envelope (http-api.md §1.4) and the discovery endpoint ``+api`` (§3.1).

The helpers here are what every JSON area uses to read a request body and
answer in the envelope devpi-client parses: ``Content-Type`` exactly
``application/json``, ``{"type", "result", "message"}``.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from twisted.web.iweb import IRequest

from devpitx.auth.acl import ANONYMOUS, Identity
from devpitx.model.indexes import get_index_config
from devpitx.storage.txn import WriteTxn
from devpitx.web.errors import JSON_TYPE, ApiError, FrameworkError, NegotiatedError
from devpitx.web.negotiate import outside_url, select_view
from devpitx.web.root import set_serial

if TYPE_CHECKING:
    from devpitx.server import Server

# devpi-client gates --no-docs, --only-docs, --register-project and list-style
# index PATCH on these (http-api.md §3.1); sorted, as the reference sends them.
FEATURES = ("push-no-docs", "push-only-docs", "push-register-project", "server-keyvalue-parsing")

# Configuration bodies are small; anything bigger is refused before it is
# parsed into memory (the Site's own cap is sized for uploads, not JSON).
MAX_JSON_BODY_BYTES = 1024 * 1024

BAD_JSON = "Bad request: could not decode json"
READ_METHODS = (b"GET", b"HEAD")


def json_response(request: IRequest, payload: dict[str, Any], code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", JSON_TYPE)
    return json.dumps(payload, indent=2).encode()


def envelope(request: IRequest, result_type: str, result: Any, *, message: str | None = None,
             code: int = 200) -> bytes:
    payload: dict[str, Any] = {"type": result_type, "result": result}
    if message is not None:
        payload["message"] = message
    return json_response(request, payload, code)


def message_response(request: IRequest, message: str, code: int = 200) -> bytes:
    return json_response(request, {"message": message}, code)


def has_query_flag(request: IRequest, name: str) -> bool:
    """Whether the query string names ``name``, with or without a value (``?no_projects``,
    ``?force=``). twisted.web's ``request.args`` drops items without ``=``."""
    query = urlsplit(request.uri.decode("latin-1")).query
    return name in parse_qs(query, keep_blank_values=True)


def require_method(request: IRequest, *methods: bytes) -> bytes:
    """The request's method if the handler serves it; else 404 (http-api.md §2.1: never 405)."""
    if request.method not in methods:
        raise FrameworkError(404, "The requested resource could not be found.")
    method: bytes = request.method
    return method


def require_json_view(request: IRequest) -> None:
    """Rule 1.5a for routes whose only handler is JSON: other Accept values get 404."""
    if select_view(request, ("application/json",)) is None:
        raise NegotiatedError(404, "The requested resource is not available as application/json.")


def read_json_body(request: IRequest, *, storable: bool = True) -> Any:
    """The request body parsed as JSON, whatever its Content-Type (http-api.md §1.8).

    ``storable``: the value will be written to the store, so every string must
    be valid Unicode (JSON escapes can smuggle in lone surrogates, which can
    be neither journaled nor used as a file name).
    """
    content = request.content
    if content is None:
        raise NegotiatedError(400, BAD_JSON)
    content.seek(0)
    data = content.read(MAX_JSON_BODY_BYTES + 1)
    if len(data) > MAX_JSON_BODY_BYTES:
        raise ApiError(413, f"JSON request body exceeds the limit of {MAX_JSON_BODY_BYTES} bytes")
    try:
        value = json.loads(data, parse_constant=_refuse_constant)
        if storable:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):     # JSONDecodeError, UnicodeError, NaN/Infinity
        raise NegotiatedError(400, BAD_JSON) from None
    return value


def report_commit(request: IRequest, tx: WriteTxn) -> None:
    """X-Devpi-Serial of a finished write: its new serial, or the current one if nothing changed."""
    assert tx.serial is not None, "report_commit is for transactions that were committed"
    set_serial(request, tx.serial)


def refusal(code: int, message: str) -> ApiError:
    """A model refusal as the spec answers it: lookups that fail are negotiated
    404s (§2.2), everything else an api error with the message."""
    if code == 404:
        return NegotiatedError(code, message)
    return ApiError(code, message)


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are Python extensions, not JSON: other clients could not read them back.
    raise ValueError(f"{name} is not JSON")


def authstatus(identity: Identity) -> list[Any]:
    """devpi-client forgets its login on anything but "ok"/"noauth" (http-api.md §3.1)."""
    if identity.authenticated:
        return ["ok", identity.username, list(identity.groups)]
    return ["noauth", "", []]


class Routes:
    def __init__(self, server: Server) -> None:
        self._server = server

    def install(self, router: Any) -> None:
        router.add("api.api", self.api)

    async def api(self, request: IRequest, user: str | None = None, index: str | None = None) -> bytes:
        require_method(request, *READ_METHODS)
        try:
            identity = await self._server.identity.identify(request)
        except ApiError:
            # +api never requires authentication (§3.1): malformed credentials
            # (e.g. a "+replica" password login) simply mean "not logged in".
            identity = ANONYMOUS
        ixconfig = None
        if user is not None and index is not None:
            ixconfig = get_index_config(self._server.store, user, index)
            if ixconfig is None:
                raise NegotiatedError(404, f"The stage {user}/{index} could not be found.")
        urls = outside_url(request, self._server.config.outside_url)
        result: dict[str, Any] = {
            "login": urls.url("/+login"),
            "authstatus": authstatus(identity),
            "features": list(FEATURES),
        }
        if ixconfig is not None:
            result["index"] = urls.url(f"/{user}/{index}")
            result["simpleindex"] = urls.url(f"/{user}/{index}/+simple/")
            if ixconfig.get("type") != "mirror":
                result["pypisubmit"] = urls.url(f"/{user}/{index}/")
        return envelope(request, "apiconfig", result)
