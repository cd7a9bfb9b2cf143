"""The aiohttp app: localstripe's routes behind idempotency, faults and a log.

Request pipeline for a Stripe call (anything outside /_fake/ without the
X-Fake-Control header):

    "before" fault with a status (delay, answer the error: nothing runs,
        nothing cached)
    -> idempotency (replay / 400 mismatch / 409 in use / run and store);
       a delay-only "before" fault is spent here, holding the key
    -> localstripe
    -> "after" fault (delay, maybe replace the real answer: the effect stays)
    -> request log
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import backend, payment_intent_confirm, setup_intents
from .faults import Fault, FaultRegistry, FaultSpecError, error_body
from .idempotency import (
    IN_USE_MESSAGE,
    MISMATCH_MESSAGE,
    Fingerprint,
    IdempotencyCache,
    StoredResponse,
    api_key_of,
    normalize_params,
)
from .reqlog import RequestLog

log = logging.getLogger(__name__)

CONTROL_PREFIX = "/_fake/"
CONTROL_HEADER = "X-Fake-Control"


@dataclass
class FakeState:
    idempotency: IdempotencyCache = field(default_factory=IdempotencyCache)
    faults: FaultRegistry = field(default_factory=FaultRegistry)
    log: RequestLog = field(default_factory=RequestLog)


STATE = web.AppKey("stripe_fake_state", FakeState)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


async def _call(handler: backend.Handler, request: web.Request) -> web.Response:
    """Run the inner handler and always get a plain Response back, so it can
    be stored and replayed byte for byte."""
    try:
        resp = await handler(request)
    except web.HTTPException as e:  # router 404/405 and the like
        return _json(
            e.status,
            {
                "error": {
                    "type": "invalid_request_error",
                    "message": f"Unrecognized request URL ({request.method}: {request.path})"
                    if e.status == 404
                    else e.reason,
                }
            },
        )
    except Exception:  # a localstripe bug: answer like Stripe's 500
        log.exception("localstripe failed on %s %s", request.method, request.path)
        return _json(500, {"error": {"type": "api_error", "message": "localstripe crashed"}})
    assert isinstance(resp, web.Response), type(resp)
    return resp


def _fault_response(fault: Fault) -> web.Response:
    assert fault.status is not None
    return _json(fault.status, error_body(fault.status, fault.name), headers=fault.headers)


async def _idempotent(
    state: FakeState,
    request: web.Request,
    handler: backend.Handler,
    key: str | None,
    slowness: float,
) -> tuple[web.Response, bool]:
    """Returns (response, replayed).

    `slowness` (a delay-only "before" fault) is spent *after* the key is
    taken: it models a slow Stripe, so a concurrent duplicate sees 409.
    """
    if key is None:
        await asyncio.sleep(slowness)
        return await _call(handler, request), False
    body = await request.read()  # aiohttp caches it for localstripe's read
    fp = Fingerprint(
        request.method,
        request.path,
        normalize_params(request.query_string, body, request.content_type),
    )
    scope = (api_key_of(request.headers.get("Authorization", "")), key)
    verdict, entry = state.idempotency.begin(scope, fp)
    try:
        await asyncio.sleep(slowness)  # must not block other requests
    except BaseException:
        if verdict == "new":
            state.idempotency.abandon(scope)
        raise
    if verdict == "mismatch":
        return _json(
            400,
            {"error": {"type": "idempotency_error", "message": MISMATCH_MESSAGE.format(key=key)}},
        ), False
    if verdict == "in_use":
        return _json(
            409,
            {
                "error": {
                    "type": "idempotency_error",
                    "code": "idempotency_key_in_use",
                    "message": IN_USE_MESSAGE.format(key=key),
                }
            },
        ), False
    if verdict == "replay":
        assert entry is not None and entry.response is not None
        stored = entry.response
        return web.Response(
            status=stored.status,
            body=stored.body,
            content_type=stored.content_type,
            headers={"Idempotent-Replayed": "true", "Idempotency-Key": key},
        ), True
    try:
        resp = await _call(handler, request)
    except BaseException:  # cancelled: it may not have run, free the key
        state.idempotency.abandon(scope)
        raise
    raw = resp.body if isinstance(resp.body, bytes) else b""
    state.idempotency.finish(scope, StoredResponse(resp.status, raw, resp.content_type))
    resp.headers["Idempotency-Key"] = key
    return resp, False


async def _stripe_call(
    state: FakeState, request: web.Request, handler: backend.Handler
) -> web.Response:
    started = time.time()
    method, path = request.method, request.path
    # Stripe ignores Idempotency-Key on GET and DELETE.
    key = request.headers.get("Idempotency-Key") if method == "POST" else None
    fired: list[str] = []
    replayed = False
    resp: web.Response | None = None
    try:
        slowness = 0.0
        before = state.faults.pick("before", method, path)
        if before is not None:
            fired.append(before.name)
            if before.status is None:
                slowness = before.delay
            else:  # never reaches Stripe: no effect, nothing cached
                await asyncio.sleep(before.delay)  # must not block others
                resp = _fault_response(before)
                return resp
        resp, replayed = await _idempotent(state, request, handler, key, slowness)
        after = state.faults.pick("after", method, path)
        if after is not None:
            fired.append(after.name)
            if after.delay > 0:
                await asyncio.sleep(after.delay)
            if after.status is not None:
                resp = _fault_response(after)  # effect happened, client errs
            else:
                resp.headers.update(after.headers)
        return resp
    finally:
        state.log.record(
            method,
            path,
            key,
            resp.status if resp is not None else 499,
            replayed,
            ",".join(fired) or None,
            started,
        )


@web.middleware
async def fake_middleware(request: web.Request, handler: backend.Handler) -> web.StreamResponse:
    if request.path.startswith(CONTROL_PREFIX) or request.headers.get(CONTROL_HEADER):
        # Control plane and test-helper reads: not logged, no faults, no
        # idempotency, so tests can count exactly the calls the worker made.
        return await _call(handler, request)
    return await _stripe_call(request.app[STATE], request, handler)


# ---- control plane -------------------------------------------------------


async def get_requests(request: web.Request) -> web.Response:
    q = request.query
    return _json(
        200,
        request.app[STATE].log.query(
            method=q.get("method"), path=q.get("path"), path_prefix=q.get("path_prefix")
        ),
    )


async def delete_requests(request: web.Request) -> web.Response:
    request.app[STATE].log.clear()
    return _json(200, {"ok": True})


async def get_faults(request: web.Request) -> web.Response:
    return _json(200, request.app[STATE].faults.list())


async def post_faults(request: web.Request) -> web.Response:
    try:
        spec = await request.json()
        if not isinstance(spec, dict):
            raise FaultSpecError("expected a JSON object")
        fault = request.app[STATE].faults.add(spec)
    except (ValueError, FaultSpecError) as e:  # JSONDecodeError included
        return _json(400, {"error": {"type": "invalid_request_error", "message": str(e)}})
    return _json(200, {"id": fault.id, "fault": fault.to_json()})


async def delete_faults(request: web.Request) -> web.Response:
    request.app[STATE].faults.clear()
    return _json(200, {"ok": True})


async def post_reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    backend.wipe()
    state.idempotency.clear()
    state.log.clear()
    state.faults.clear()
    return _json(200, {"ok": True})


async def _success_of(request: web.Request) -> bool:
    """`{"success": bool}` (default true) from a control call's JSON body."""
    raw = await request.read()
    body = json.loads(raw) if raw.strip() else {}
    success = body.get("success", True) if isinstance(body, dict) else None
    if not isinstance(success, bool):
        raise backend.UserError(400, 'expected a JSON body {"success": true|false}')
    return success


async def post_authenticate_payment_intent(request: web.Request) -> web.Response:
    """The customer completes (success) or fails 3-D Secure on-session."""
    pi = payment_intent_confirm.authenticate(request.match_info["id"], await _success_of(request))
    return _json(200, pi._export())


async def post_authenticate_setup_intent(request: web.Request) -> web.Response:
    si = setup_intents.authenticate(request.match_info["id"], await _success_of(request))
    return _json(200, si._export())


async def get_health(request: web.Request) -> web.Response:
    return _json(200, {"ok": True})


def make_app() -> web.Application:
    app = web.Application(middlewares=[fake_middleware, *backend.MIDDLEWARES])
    app[STATE] = FakeState()
    r = app.router
    r.add_get("/_fake/health", get_health)
    r.add_get("/_fake/requests", get_requests)
    r.add_delete("/_fake/requests", delete_requests)
    r.add_get("/_fake/faults", get_faults)
    r.add_post("/_fake/faults", post_faults)
    r.add_delete("/_fake/faults", delete_faults)
    r.add_post("/_fake/reset", post_reset)
    r.add_post("/_fake/payment_intents/{id}/authenticate", post_authenticate_payment_intent)
    r.add_post("/_fake/setup_intents/{id}/authenticate", post_authenticate_setup_intent)
    backend.add_routes(r)
    return app
