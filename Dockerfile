# One image for every artwatch service; the command picks the role.
# GPU workers run it built with EXTRAS=clip on a host with the NVIDIA container toolkit.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml requirements.lock README.md LICENSE ./
COPY config ./config
COPY crawler ./crawler
COPY matching ./matching
COPY notices ./notices
COPY registry ./registry
COPY storage ./storage
COPY webapp ./webapp
COPY workers ./workers

# jemalloc: a worker holding a large registry fragments glibc's heap and slows
# every stage (matching/allocator.py, docs/benchmarks.md); preloaded below.
RUN apt-get update && apt-get install -y --no-install-recommends libjemalloc2 \
 && rm -rf /var/lib/apt/lists/*

# EXTRAS="" (the default) is the plain install that web, CPU workers and beat
# run; GPU workers build with EXTRAS=clip (docker-compose.yml's worker-gpu).
ARG EXTRAS=""
COPY docker/install.sh ./docker/install.sh
RUN sh docker/install.sh python "$EXTRAS" \
 && useradd --system --home /app artwatch \
 && mkdir -p /data && chown artwatch /data

USER artwatch
ENV ARTWATCH_DATA_DIR=/data LD_PRELOAD=libjemalloc.so.2
ENTRYPOINT ["artwatch"]
CMD ["--help"]
