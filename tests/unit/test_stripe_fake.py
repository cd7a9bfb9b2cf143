"""Tests for the Stripe fake (stripe_fake/): our additions and the
localstripe behaviours the worker's tests rely on."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import stripe

from stripe_fake import FakeStripe, FakeStripeUnavailable, control
from stripe_fake.__main__ import main

PICKLE = '/tmp/localstripe.pickle'


def _pickle_state() -> tuple[bool, float | None]:
    try:
        return True, os.stat(PICKLE).st_mtime
    except FileNotFoundError:
        return False, None


# Taken at import, before the module fixture starts the server.
PICKLE_BEFORE = _pickle_state()


@pytest.fixture(scope='module')
def fake() -> Iterator[FakeStripe]:
    with FakeStripe.start() as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(fake: FakeStripe) -> None:
    fake.reset()


@pytest.fixture
def client(fake: FakeStripe) -> stripe.StripeClient:
    return stripe.StripeClient('sk_test_x', base_addresses={'api': fake.url},
                               max_network_retries=0)


def post(fake: FakeStripe, path: str, params: dict[str, str],
         key: str | None = None,
         api_key: str = 'sk_test_x') -> tuple[int, dict[str, str], Any]:
    """A raw form POST, to see statuses and headers the SDK hides."""
    headers = {'Authorization': f'Bearer {api_key}',
               'Content-Type': 'application/x-www-form-urlencoded'}
    if key is not None:
        headers['Idempotency-Key'] = key
    req = urllib.request.Request(
        fake.url + path, data=urllib.parse.urlencode(params).encode(),
        headers=headers, method='POST')
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def test_sdk_flow_and_localstripe_behaviour(
        fake: FakeStripe, client: stripe.StripeClient) -> None:
    params: stripe.params.TokenCreateParams = {'card': {
        'number': '4242424242424242', 'exp_month': '12', 'exp_year': '2030',
        'cvc': '123'}}
    tok = client.v1.tokens.create(params)
    again = client.v1.tokens.create(params)
    assert tok.card is not None and again.card is not None
    retrieved = client.v1.tokens.retrieve(tok.id).card
    assert retrieved is not None and retrieved.fingerprint
    assert retrieved.fingerprint == again.card.fingerprint == \
        tok.card.fingerprint
    with pytest.deprecated_call():  # the pre-v1 namespace still works
        old_api = client.tokens.retrieve(tok.id).card
    assert old_api is not None
    assert old_api.fingerprint == retrieved.fingerprint

    cus = client.v1.customers.create({'metadata': {'user': '42'}})
    visa = client.v1.customers.payment_sources.create(
        cus.id, {'source': tok.id, 'metadata': {'job': 'j1'}})
    assert fake.list_cards(cus.id)[0]['metadata'] == {'job': 'j1'}
    mc = client.v1.customers.payment_sources.create(
        cus.id, {'source': fake.create_card_token('5555555555554444')})
    client.v1.customers.update(cus.id, {'default_source': mc.id})
    assert fake.get_customer(cus.id)['default_source'] == mc.id

    charge = client.v1.charges.create({
        'customer': cus.id, 'source': visa.id, 'amount': 1000,
        'currency': 'usd', 'metadata': {'job': 'j1'}, 'description': 'd'})
    assert charge.status == 'succeeded' and charge.paid
    listed = client.v1.charges.list({'customer': cus.id})
    assert [c.id for c in listed.data] == [charge.id]
    assert fake.list_charges(cus.id)[0]['metadata'] == {'job': 'j1'}

    # Quirks documented in stripe_fake/__init__.py.
    assert fake.list_cards(cus.id)[1]['brand'] == 'Visa'  # it is a MC
    tiny = client.v1.charges.create({'customer': cus.id, 'amount': 1,
                                     'currency': 'zzz'})
    assert tiny.status == 'succeeded'  # no amount_too_small, no currency check
    with pytest.raises(stripe.InvalidRequestError) as bogus:
        client.v1.customers.update(cus.id, {'default_source': 'card_nope'})
    assert bogus.value.code == 'resource_missing'
    with pytest.raises(stripe.InvalidRequestError) as reused:
        client.v1.customers.payment_sources.create(cus.id, {'source': tok.id})
    assert reused.value.code == 'token_already_used'

    client.v1.customers.payment_sources.delete(cus.id, mc.id)
    assert [c['id'] for c in fake.list_cards(cus.id)] == [visa.id]
    assert [c['id'] for c in fake.list_customers()] == [cus.id]


def test_declines(fake: FakeStripe, client: stripe.StripeClient) -> None:
    cus = client.v1.customers.create()
    with pytest.raises(stripe.CardError) as at_attach:
        client.v1.customers.payment_sources.create(
            cus.id, {'source': fake.create_card_token('4000000000000002')})
    assert at_attach.value.code == 'card_declined'
    assert at_attach.value.error is not None
    assert at_attach.value.error.type == 'card_error'
    assert at_attach.value.error.decline_code == 'generic_decline'
    late = client.v1.customers.payment_sources.create(
        cus.id, {'source': fake.create_card_token('4000000000000341')})
    with pytest.raises(stripe.CardError) as at_charge:
        client.v1.charges.create({'customer': cus.id, 'source': late.id,
                                  'amount': 500, 'currency': 'usd'})
    assert at_charge.value.code == 'card_declined'
    assert at_charge.value.error is not None
    assert at_charge.value.error.decline_code == 'generic_decline'
    assert at_charge.value.error.charge
    # The failed charge is stored.
    assert [c['status'] for c in fake.list_charges(cus.id)] == ['failed']


def test_api_keys(fake: FakeStripe) -> None:
    assert post(fake, '/v1/customers', {}, api_key='bad')[0] == 401
    assert post(fake, '/v1/customers', {}, api_key='sk_live_bad')[0] == 200


def test_idempotent_replay(fake: FakeStripe,
                           client: stripe.StripeClient) -> None:
    s1, h1, b1 = post(fake, '/v1/customers', {'email': 'a@b.c'}, key='k1')
    s2, h2, b2 = post(fake, '/v1/customers', {'email': 'a@b.c'}, key='k1')
    assert (s1, s2) == (200, 200) and b1['id'] == b2['id']
    assert 'Idempotent-Replayed' not in h1
    assert h2['Idempotent-Replayed'] == 'true'
    # The SDK's idempotency_key option takes the same path.
    c3 = client.v1.customers.create({'email': 'a@b.c'},
                                    {'idempotency_key': 'k1'})
    assert c3.id == b1['id']
    assert len(fake.list_customers()) == 1
    assert [r['replayed'] for r in fake.requests()] == [False, True, True]
    # Keys are scoped per API key, as on Stripe.
    s4, _, b4 = post(fake, '/v1/customers', {'email': 'a@b.c'}, key='k1',
                     api_key='sk_test_other')
    assert s4 == 200 and b4['id'] != b1['id']


def test_idempotency_mismatch(fake: FakeStripe,
                              client: stripe.StripeClient) -> None:
    assert post(fake, '/v1/customers', {'email': 'a@b.c'}, key='k')[0] == 200
    status, _, body = post(fake, '/v1/customers', {'email': 'x@y.z'}, key='k')
    assert status == 400 and body['error']['type'] == 'idempotency_error'
    assert post(fake, '/v1/tokens', {}, key='k')[0] == 400  # other path
    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.create({'email': 'x@y.z'}, {'idempotency_key': 'k'})
    assert len(fake.list_customers()) == 1


def test_concurrent_duplicate_gets_409(fake: FakeStripe) -> None:
    fake.inject(method='POST', path='^/v1/customers$', delay=1.0, times=1)
    first: list[Any] = []
    t = threading.Thread(target=lambda: first.append(
        post(fake, '/v1/customers', {}, key='busy')))
    t.start()
    time.sleep(0.3)
    status, _, body = post(fake, '/v1/customers', {}, key='busy')
    t.join()
    assert status == 409
    assert body['error']['code'] == 'idempotency_key_in_use'
    assert first[0][0] == 200
    assert post(fake, '/v1/customers', {}, key='busy')[2]['id'] == \
        first[0][2]['id']


def test_after_fault_keeps_effect_and_replays(
        fake: FakeStripe, client: stripe.StripeClient) -> None:
    fake.inject(method='POST', path='^/v1/customers$', status=500,
                when='after', times=1)
    with pytest.raises(stripe.APIError):
        client.v1.customers.create({}, {'idempotency_key': 'lost'})
    created = fake.list_customers()
    assert len(created) == 1  # the effect happened
    status, headers, body = post(fake, '/v1/customers', {}, key='lost')
    assert status == 200 and body['id'] == created[0]['id']
    assert headers['Idempotent-Replayed'] == 'true'
    assert len(fake.list_customers()) == 1
    assert [r['fault'] is not None for r in fake.requests()] == [True, False]


def test_before_fault_has_no_effect(fake: FakeStripe) -> None:
    fid = fake.inject(method='POST', path='^/v1/customers$', status=500,
                      times=1)
    status, _, body = post(fake, '/v1/customers', {}, key='k')
    assert status == 500 and body['error']['type'] == 'api_error'
    assert fake.list_customers() == []
    assert fake.faults()[0]['remaining'] == 0
    # Not cached: the same key now really runs.
    status, headers, _ = post(fake, '/v1/customers', {}, key='k')
    assert status == 200 and 'Idempotent-Replayed' not in headers
    assert len(fake.list_customers()) == 1
    assert fake.requests()[0]['fault'] == fid


def test_rate_limit_fault_headers(fake: FakeStripe) -> None:
    fake.inject(path='^/v1/customers', status=429,
                headers={'Stripe-Should-Retry': 'true'})
    status, headers, body = post(fake, '/v1/customers', {})
    assert status == 429 and headers['Stripe-Should-Retry'] == 'true'
    assert body['error']['type'] == 'rate_limit_error'
    assert body['error']['code'] == 'rate_limit'


def test_delay_fault_delays_without_blocking(
        fake: FakeStripe, client: stripe.StripeClient) -> None:
    fake.inject(method='GET', path='^/v1/customers$', delay=0.8)
    slow: list[float] = []

    def timed_list() -> None:
        t0 = time.monotonic()
        client.v1.customers.list()
        slow.append(time.monotonic() - t0)

    t = threading.Thread(target=timed_list)
    t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    fake.create_card_token()  # unlogged, but it goes through the server
    assert time.monotonic() - t0 < 0.5  # other requests are not blocked
    t.join()
    assert slow[0] >= 0.8


def test_request_log_and_filters(fake: FakeStripe,
                                 client: stripe.StripeClient) -> None:
    cus = client.v1.customers.create()
    client.v1.customers.retrieve(cus.id)
    client.v1.customers.list()
    fake.list_customers()  # control reads are not logged
    fake.create_card_token()
    log = fake.requests()
    assert [(r['method'], r['path']) for r in log] == [
        ('POST', '/v1/customers'), ('GET', f'/v1/customers/{cus.id}'),
        ('GET', '/v1/customers')]
    first = log[0]
    assert set(first) == {'seq', 'time', 'method', 'path', 'idempotency_key',
                          'status', 'replayed', 'fault'}
    assert first['idempotency_key']  # the SDK adds one to every POST
    assert first['status'] == 200 and first['fault'] is None
    assert fake.count(method='GET') == 2
    assert fake.count(path='/v1/customers') == 2
    assert fake.count(path_prefix='/v1/customers/') == 1
    assert fake.count(method='post', path_prefix='/v1/') == 1
    fake.clear_requests()
    assert fake.requests() == []


def test_reset_wipes_everything(fake: FakeStripe) -> None:
    post(fake, '/v1/customers', {'email': 'a@b.c'}, key='r')
    fake.inject(path='^/v1/charges', status=500)
    fake.reset()
    assert fake.list_customers() == []
    assert fake.faults() == [] and fake.requests() == []
    # The idempotency cache is gone too: the key is free for new params.
    assert post(fake, '/v1/customers', {'email': 'x@y.z'}, key='r')[0] == 200


def test_bad_fault_spec_is_rejected(fake: FakeStripe) -> None:
    from stripe_fake.control import FakeStripeError
    with pytest.raises(FakeStripeError) as err:
        fake.inject(path='(', status=500)
    assert err.value.status == 400


def test_listens_on_loopback_only(fake: FakeStripe) -> None:
    host, port = urllib.parse.urlsplit(fake.url).hostname, \
        urllib.parse.urlsplit(fake.url).port
    assert host == '127.0.0.1' and port
    if not os.path.exists('/proc/net/tcp'):
        pytest.skip('needs Linux /proc/net')
    listeners = []
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, hexport = local.rsplit(':', 1)
                if state == '0A' and int(hexport, 16) == port:
                    listeners.append(addr)
    assert listeners == ['0100007F']  # 127.0.0.1, IPv4 only


def test_no_pickle_written(fake: FakeStripe,
                           client: stripe.StripeClient) -> None:
    client.v1.customers.create()
    post(fake, '/v1/customers', {}, key='p')
    fake.reset()
    assert _pickle_state() == PICKLE_BEFORE


def test_without_its_extra_it_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(control, 'SERVER_REQUIREMENTS', ('aiohttp', 'no_such_module'))
    with pytest.raises(FakeStripeUnavailable, match=r'install payworker\[fake\]'):
        FakeStripe.start()
    assert main([]) == 2
    assert 'no_such_module: install payworker[fake]' in capsys.readouterr().err
