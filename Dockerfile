# The pausewire image: the resumer worker, the pause helper for flows, and
# the migrations runner with its SQL files. Built by compose/docker-compose.yml
# for the migrate and resumer services.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies and the package first, SQL last: editing a migration then
# rebuilds one small layer instead of reinstalling every dependency.
# README.md is matched by a pattern so that a tree without it still builds.
COPY pyproject.toml README.md* ./
COPY flows/ flows/
COPY outbox/ outbox/
COPY resumer/ resumer/
RUN pip install .

# The installed package lives in site-packages, away from sql/; the
# migrations runner finds the files through this variable.
COPY sql/ sql/
ENV PAUSEWIRE_SQL_DIR=/app/sql

# A home folder, because the Prefect client keeps its profile under ~/.prefect.
RUN useradd --system --uid 10001 --create-home pausewire
USER pausewire

# Prometheus metrics and /healthz of the resumer.
EXPOSE 9400

CMD ["python", "-m", "resumer"]
