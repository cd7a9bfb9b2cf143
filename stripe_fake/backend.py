"""localstripe, tamed: no disk, a few gaps filled, its routes on our router.

localstripe is GPL-3.0-or-later; it is only ever imported by this package's
server (payworker's optional `fake` extra), never by the worker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import (
    cards,
    charges,
    payment_intents,
    payment_method_predicates,
    payment_methods,
    refunds,
    setup_intents,
)
from .common import card_error
from .localstripe_ext import res as _res
from .localstripe_ext import server as _server
from .localstripe_ext import webhooks as _webhooks

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

UserError = _res.UserError
Customer = _res.Customer
Token = _res.Token
List = _res.List


_original_add_source = Customer._api_add_source


def _add_source(id: str, source: Any = None, metadata: Any = None, **kwargs: Any) -> Any:
    """Customer._api_add_source, closer to Stripe in three ways.

    * accepts `metadata` (localstripe: 400 "Unexpected metadata");
    * a token can be used once (Stripe: 400 token_already_used).
      localstripe would attach the *same* card object again, giving the
      customer two list entries with one id;
    * a card the card check declines answers the test card's code and
      `decline_code` (localstripe: card_declined, no decline code).
    """
    if metadata is not None and not isinstance(metadata, dict):
        raise UserError(400, "Bad request")
    token = None
    if isinstance(source, str) and source.startswith("tok_"):
        token = Token._api_retrieve(source)  # 404 if unknown
        if getattr(token, "_used", False):
            raise UserError(
                400,
                f"You cannot use a Stripe token more than once: {source}.",
                {"code": "token_already_used", "param": "source"},
            )
    number = token.card._card_number if token is not None else None
    if isinstance(source, dict):
        number = str(source.get("number"))
    profile = cards.card_for(number or "")
    if profile.decline is not None and profile.checked_on_attach:
        decline = profile.decline
        raise card_error(decline.message, decline.code, decline.decline_code, param="source")
    card = _original_add_source(id, source=source, **kwargs)
    if token is not None:
        token._used = True  # '_' attributes are not exported by localstripe
    if metadata:
        card.metadata = {**(card.metadata or {}), **metadata}
    return card


# Customer._api_create(source=...) calls this too, so patch the class.
Customer._api_add_source = staticmethod(_add_source)
# Charges, card attaches and intents ask these of a card: Stripe's test cards.
payment_method_predicates.install()


def _list_sources(
    id: str, object: Any = None, limit: Any = None, starting_after: Any = None, **kwargs: Any
) -> Any:
    """GET /v1/customers/{id}/sources with `limit`/`starting_after`.

    localstripe's version rejects paging params (400) although the SDK's
    auto-paging sends them, caps the page at 10 with no way to get more, and
    with `object=` it *overwrites the customer's own source list* with the
    filtered one. This builds a fresh List instead.
    """
    if kwargs:
        raise UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
    if object is not None and object not in ("card", "bank_account"):
        raise UserError(400, "Bad request")
    customer = Customer._api_retrieve(id)
    page = List("/v1/customers/" + id + "/sources", limit=limit, starting_after=starting_after)
    page._list = [s for s in customer.sources._list if object is None or s.object == object]
    return page


class _CustomerUpdate:
    """POST /v1/customers/{id}, refusing a `default_source` the customer
    does not have (as Stripe does, 400 resource_missing). localstripe
    stores it, and from then on every read of that customer, every charge
    to it and every customer list crashes with a 500. Likewise an
    `invoice_settings[default_payment_method]` not attached to the customer
    (localstripe: any pm_ id, even a missing one)."""

    @staticmethod
    def _api_update(id: str, **data: Any) -> Any:
        payment_methods.check_default_payment_method(id, data)
        wanted = data.get("default_source")
        if wanted:
            customer = Customer._api_retrieve(id)
            if not any(s.id == wanted for s in customer.sources._list):
                raise UserError(
                    400,
                    f"No such source: '{wanted}'",
                    {"code": "resource_missing", "param": "default_source"},
                )
        return Customer._api_update(id, **data)


_OVERRIDES: dict[tuple[str, str], Handler] = {
    ("POST", "/v1/customers/{id}/sources"): _server.api_extra(
        _add_source, "/v1/customers/{id}/sources"
    ),
    ("GET", "/v1/customers/{id}/sources"): _server.api_extra(
        _list_sources, "/v1/customers/{id}/sources"
    ),
    ("POST", "/v1/customers/{id}"): _server.api_update(_CustomerUpdate, "/v1/customers/{id}"),
    **payment_methods.ROUTES,
    **setup_intents.ROUTES,
    **payment_intents.ROUTES,
    **charges.ROUTES,
    **refunds.ROUTES,
}


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """localstripe's UserError as JSON; a 402 is a `card_error` (localstripe
    labels every error invalid_request_error)."""
    try:
        return await handler(request)
    except UserError as e:
        error = e.body["error"]
        if e.code == 402 and error.get("type") == "invalid_request_error":
            error["type"] = "card_error"
        response: web.StreamResponse = e.to_response()
        return response


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """localstripe's auth check (401 unless an sk_* key), except for our
    control plane, which takes no Stripe key."""
    if request.path.startswith("/_fake/"):
        return await handler(request)
    response: web.StreamResponse = await _server.auth_middleware(request, handler)
    return response


# localstripe's own middlewares minus save_store_middleware (disk dumps).
# The error middleware turns its UserError into JSON; auth gives 401.
MIDDLEWARES: list[Any] = [_error_middleware, _auth_middleware]


def add_routes(router: web.UrlDispatcher) -> None:
    """Register localstripe's routes (with our overrides) on `router`.

    Order matters: localstripe registers its "extra" routes (e.g.
    /v1/invoices/upcoming) before the generic /{id} ones; we keep its order.
    """
    for (method, path), handler in _OVERRIDES.items():
        router.add_route(method, path, handler)
    for route in _server.app.router.routes():
        canonical = route.resource.canonical if route.resource else None
        if canonical is None or (route.method, canonical) in _OVERRIDES:
            continue
        router.add_route(route.method, canonical, route.handler)


def wipe() -> None:
    """Forget every Stripe object and registered webhook (like DELETE
    /_config/data, plus webhooks)."""
    _res.store.clear()
    _webhooks._webhooks.clear()
