# The payworker image, used by the migrate, worker and flower services of
# docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Only what the package needs: the tests and the Stripe fake (stripe_fake/, the `fake`
# extra with GPL localstripe) stay out.
COPY pyproject.toml README.md LICENSE celeryconfig.py ./
COPY worker ./worker
COPY tasks ./tasks
COPY db ./db
RUN pip install . \
    && useradd --system --uid 10001 --user-group --no-create-home payworker \
    && mkdir -p /var/lib/flower /var/lib/payworker-metrics \
    && chown payworker:payworker /var/lib/flower /var/lib/payworker-metrics

# Celery warns against running as root, and a worker needs no privileges.
USER payworker
CMD ["payworker", "worker"]
