# One image for every artwatch service; the command picks the role.
# GPU workers run the same image on a host with the NVIDIA container toolkit.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml requirements.lock README.md LICENSE ./
COPY config ./config
COPY crawler ./crawler
COPY matching ./matching
COPY notices ./notices
COPY storage ./storage
COPY webapp ./webapp
COPY workers ./workers

# jemalloc: a worker holding a large registry fragments glibc's heap and slows
# every stage (matching/allocator.py, docs/benchmarks.md); preloaded below.
RUN apt-get update && apt-get install -y --no-install-recommends libjemalloc2 \
 && rm -rf /var/lib/apt/lists/*

RUN pip install torch==2.14.1 torchvision==0.29.1 \
 && pip install -c requirements.lock . \
 && useradd --system --home /app artwatch \
 && mkdir -p /data && chown artwatch /data

USER artwatch
ENV ARTWATCH_DATA_DIR=/data LD_PRELOAD=libjemalloc.so.2
ENTRYPOINT ["artwatch"]
CMD ["--help"]
