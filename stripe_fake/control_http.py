"""HTTP plumbing of the fake's controller: JSON/form requests over urllib. Stdlib only.

The base of :class:`stripe_fake.control.FakeStripe`: its control-plane and
Stripe-object mixins call the server through ``_request``/``_stripe`` here.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

TEST_KEY = "sk_test_fake"


class FakeStripeError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body


class FakeStripeHttp:
    """Requests to one fake server at `url`; errors as :class:`FakeStripeError`."""

    def __init__(self, url: str) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url.rstrip("/")

    def _list_all(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query = dict(params, limit="100")
            if cursor:
                query["starting_after"] = cursor
            page = self._stripe("GET", path, query=query)
            items.extend(page["data"])
            if not page.get("has_more") or not page["data"]:
                return items
            cursor = page["data"][-1]["id"]

    def _stripe(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {TEST_KEY}", "X-Fake-Control": "1"}
        return self._request(method, path, query=query, form=form, headers=headers)

    def _request(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        json_body: Any = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        hdrs = dict(headers or {})
        data: bytes | None = None
        if json_body is not None:
            data = json.dumps(json_body).encode()
            hdrs["Content-Type"] = "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        # The scheme is http(s): checked in __init__.
        req = urllib.request.Request(url, data=data, method=method, headers=hdrs)  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
            raise FakeStripeError(e.code, body) from None


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")
