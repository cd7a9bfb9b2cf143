"""Stripe's amount rules, checked before any call so a bad amount never reaches Stripe."""

from __future__ import annotations

from core.errors import InvalidMessage, PermanentError

# Stripe's hard ceiling: amounts have at most eight digits.
MAX_AMOUNT = 99_999_999

ZERO_DECIMAL = frozenset(
    """
    bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf
    """.split()
)
# Three-decimal currencies are charged in multiples of 10 (the last digit must be 0).
THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])
# ISK is charged in whole krónur but represented with two decimals.
MULTIPLE_OF_100 = frozenset({"isk"})

# Presentment currencies Stripe accepts for card charges.
SUPPORTED = frozenset(
    """
    usd aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bhd bif bmd bnd bob brl bsd
    bwp byn bzd cad cdf chf clp cny cop crc cve czk djf dkk dop dzd egp etb eur fjd fkp gbp
    gel gip gmd gnf gtq gyd hkd hnl htg huf idr ils inr isk jmd jod jpy kes kgs khr kmf krw
    kwd kyd kzt lak lbp lkr lrd lsl mad mdl mga mkd mmk mnt mop mur mvr mwk mxn myr mzn nad
    ngn nio nok npr nzd omr pab pen pgk php pkr pln pyg qar ron rsd rub rwf sar sbd scr sek
    sgd shp sle sos srd std szl thb tjs tnd top try ttd twd tzs uah ugx uyu uzs vnd vuv wst
    xaf xcd xof xpf yer zar zmw
    """.split()
)

# Minimum charge per settlement currency, in minor units (Stripe: USD 0.50 or equivalent).
MINIMUMS = {
    "usd": 50, "eur": 50, "gbp": 30, "cad": 50, "aud": 50, "jpy": 50, "chf": 50, "nzd": 50,
    "sgd": 50, "brl": 50, "inr": 50, "aed": 200, "bgn": 100, "czk": 1500, "dkk": 250,
    "hkd": 400, "huf": 17500, "mxn": 1000, "myr": 200, "nok": 300, "pln": 200, "ron": 200,
    "sek": 300, "thb": 1000,
}  # fmt: skip


def check_charge_amount(amount: int, currency: str) -> None:
    """Check a well-typed amount and lower-case currency against Stripe's rules.

    Raises:
        InvalidMessage: amount not positive, or breaking the currency's decimal rule.
        PermanentError: code `unsupported_currency`, `amount_too_small` or `amount_too_large`.
    """
    if amount <= 0:
        raise InvalidMessage(f"amount must be a positive integer in minor units, got {amount}")
    if currency not in SUPPORTED:
        raise PermanentError(
            f"currency {currency.upper()} is not supported by Stripe", code="unsupported_currency"
        )
    if amount > MAX_AMOUNT:
        raise PermanentError(
            f"amount {amount} exceeds Stripe's maximum of {MAX_AMOUNT}", code="amount_too_large"
        )
    if currency in THREE_DECIMAL and amount % 10:
        raise InvalidMessage(f"{currency.upper()} amounts must be a multiple of 10, got {amount}")
    if currency in MULTIPLE_OF_100 and amount % 100:
        raise InvalidMessage(f"{currency.upper()} amounts must be a multiple of 100, got {amount}")
    minimum = MINIMUMS.get(currency)
    if minimum is not None and amount < minimum:
        raise PermanentError(
            f"amount {amount} is below the {currency.upper()} minimum of {minimum}",
            code="amount_too_small",
        )


def decimals(currency: str) -> int:
    """Digits after the decimal point in `currency`'s minor unit (0, 2 or 3)."""
    currency = currency.lower()
    if currency in ZERO_DECIMAL:
        return 0
    return 3 if currency in THREE_DECIMAL else 2


def format_amount(amount: int, currency: str) -> str:
    """`1999, "usd"` → `"19.99 USD"`, with integer arithmetic only."""
    places = decimals(currency)
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**places)
    text = f"{whole}.{frac:0{places}d}" if places else str(whole)
    return f"{sign}{text} {currency.upper()}"
