# Trainer image: torch first, then DeepSpeed built against it (no build isolation).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# The whole source tree (.dockerignore keeps out tests, docs, caches and local state): every package that
# pyproject.toml installs is there, as tests/deploy/test_wheel.py checks for the wheel.
COPY . .
RUN pip install --no-cache-dir "torch>=2.2" setuptools wheel && pip install --no-cache-dir --no-build-isolation ".[train]"
CMD ["m5", "train", "all", "--preset", "default", "--catalog", "/data/catalog", "--out", "/bundles"]
