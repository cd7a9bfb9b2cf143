"""What the Stripe endpoints added on top of localstripe share: errors in
Stripe's shape, parameter checks, newest-first lists, the aiohttp glue."""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from .localstripe_ext import res, server

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Params = dict[str, Any]
# An endpoint: (path arguments, request parameters) -> a localstripe object
# (exported with `expand`) or an already exported dict.
Endpoint = Callable[[Mapping[str, str], Params], Any]

DOC_URL = "https://docs.stripe.com/error-codes/"
# Stripe lists newest first; `created` has one-second resolution, so ties are
# broken by the order objects were made in.
_sequence = itertools.count()


class StripeError(res.UserError):  # type: ignore[misc]
    """An error answered in Stripe's shape: {"error": {type, code, ...}}."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        error_type: str = "invalid_request_error",
        **extra: Any,
    ) -> None:
        contents: Params = {k: v for k, v in extra.items() if v is not None}
        if code is not None:
            contents["code"] = code
            contents["doc_url"] = DOC_URL + code.replace("_", "-")
        if param is not None:
            contents["param"] = param
        super().__init__(status, message, contents)
        self.body["error"]["type"] = error_type


def card_error(message: str, code: str, decline_code: str | None, **extra: Any) -> StripeError:
    """402 card_error (Stripe: "Request Failed", the parameters were valid)."""
    return StripeError(
        402, message, code, error_type="card_error", decline_code=decline_code, **extra
    )


def no_such(kind: str, object_id: str, param: str | None = None) -> StripeError:
    """A missing object: 404 on the path, 400 when named by a parameter.

    Stripe answers `resource_missing` with "No such <kind>: '<id>'"; the
    status for an object named by a parameter (400, not 404) follows what
    public integrations record, the API reference does not state it.
    """
    return StripeError(
        400 if param else 404, f"No such {kind}: '{object_id}'", "resource_missing", param
    )


def check_params(params: Params, allowed: Iterable[str], required: Iterable[str] = ()) -> None:
    """Stripe's 400s for an unknown parameter and a missing required one."""
    known = set(allowed) | {"expand"}
    for name in params:
        if name not in known:
            raise StripeError(400, f"Received unknown parameter: {name}", "parameter_unknown", name)
    for name in required:
        if params.get(name) in (None, ""):
            raise StripeError(400, f"Missing required param: {name}.", "parameter_missing", name)


def to_bool(params: Params, name: str, default: bool = False) -> bool:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise StripeError(400, f"Invalid boolean: {value}", None, name)


def to_amount(params: Params, name: str = "amount") -> int | None:
    """A positive integer amount in minor units, or None when absent."""
    value = params.get(name)
    if value is None:
        return None
    try:
        amount = int(value)
    except (TypeError, ValueError):
        raise StripeError(400, "Invalid integer: " + str(value), None, name) from None
    if amount < 1:
        raise StripeError(400, "This value must be greater than or equal to 1.", None, name)
    return amount


def to_metadata(params: Params) -> dict[str, str]:
    metadata = params.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise StripeError(400, "Invalid object", None, "metadata")
    return {str(k): str(v) for k, v in metadata.items()}


def merge_metadata(current: dict[str, str], update: dict[str, str]) -> dict[str, str]:
    """Stripe's metadata update: keys merge, an empty value deletes one."""
    merged = dict(current)
    for key, value in update.items():
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def choice(params: Params, name: str, allowed: tuple[str, ...], default: str | None) -> str | None:
    """An enum parameter; other values are a 400 naming the allowed ones."""
    value = params.get(name, default)
    if value is not None and value not in allowed:
        # Stripe's wording for a bad enum value (not in the reference).
        raise StripeError(400, f"Invalid {name}: must be one of {', '.join(allowed)}", None, name)
    return value


def stamp(obj: Any) -> None:
    """Give a new object its place in newest-first lists."""
    obj._seq = next(_sequence)
    obj.created = int(time.time())


def page(url: str, items: list[Any], params: Params) -> Any:
    """A localstripe List of `items`, newest first, paged like Stripe."""
    listing = res.List(url, limit=params.get("limit"), starting_after=params.get("starting_after"))
    listing._list = sorted(items, key=lambda o: (o.created, getattr(o, "_seq", -1)), reverse=True)
    return listing


def objects(kind: str) -> list[Any]:
    """Every stored object whose `object` is `kind` (localstripe's store)."""
    prefix = kind + ":"
    return [v for k, v in res.store.items() if k.startswith(prefix)]


def stored(kind: str, object_id: str) -> Any | None:
    return res.store.get(f"{kind}:{object_id}")


def export(obj: Any, expand: Any = None) -> Any:
    return obj if isinstance(obj, dict) else obj._export(expand=expand)


def endpoint(func: Endpoint) -> Handler:
    """aiohttp handler for `func`: form (or JSON) body and query as params."""

    async def handle(request: web.Request) -> web.StreamResponse:
        params: Params = {}
        if request.method == "POST":
            params.update(await server.get_post_data(request) or {})
        params.update(server.unflatten_data(request.query) or {})
        expand = params.get("expand")
        result = func(request.match_info, params)
        response: web.StreamResponse = server.json_response(export(result, expand))
        return response

    return handle
