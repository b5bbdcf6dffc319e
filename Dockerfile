# igsync runtime image: the server only. The embedded stores (SecantusDB is GPL-2.0-only)
# are not in the image; point it at real MongoDB and Redis with IGSYNC_MONGO_URL / IGSYNC_REDIS_URL.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    IGSYNC_HOST=0.0.0.0 \
    IGSYNC_PORT=8080

WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY pyproject.toml setup.py README.md ./
COPY config ./config
COPY models ./models
COPY server ./server
COPY handlers ./handlers
RUN pip install --no-cache-dir --no-deps . \
    && useradd --system --uid 10001 --no-create-home igsync

USER 10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('IGSYNC_PORT', '8080'), timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["igsync", "serve"]
