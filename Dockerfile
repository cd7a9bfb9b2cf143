# The payworker image, used by the migrate, worker, flower and metrics services of
# docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Dependencies first, from the lock (`make lock`): every package pinned, every file checked
# against its sha256, nothing else allowed in (pip refuses an unlisted dependency in
# hash-checking mode). The lock also pins the build backend (setuptools, wheel). Its own
# layer: a change of our code does not reinstall them.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

# Only what the package needs: the tests and the Stripe fake (stripe_fake/, the `fake`
# extra with GPL localstripe) stay out.
COPY pyproject.toml README.md LICENSE celeryconfig.py ./
COPY core ./core
COPY worker ./worker
COPY tasks ./tasks
COPY db ./db
# The project alone: its dependencies are installed above (--no-deps) and it is built with
# the locked setuptools (--no-build-isolation: no unpinned build backend is downloaded).
RUN pip install --no-deps --no-build-isolation . \
    && pip check \
    && useradd --system --uid 10001 --user-group --no-create-home payworker \
    && mkdir -p /var/lib/flower /var/lib/payworker-metrics \
    && chown payworker:payworker /var/lib/flower /var/lib/payworker-metrics

# Celery warns against running as root, and a worker needs no privileges.
USER payworker
CMD ["payworker", "worker"]
