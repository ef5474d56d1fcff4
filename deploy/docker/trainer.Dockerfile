# Trainer image: torch first, then DeepSpeed built against it (no build isolation).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY m5core m5core
COPY service service
COPY indexer indexer
COPY trainer trainer
COPY catalog catalog
COPY evaluation evaluation
COPY m5cli m5cli
RUN pip install --no-cache-dir "torch>=2.2" setuptools wheel && pip install --no-cache-dir --no-build-isolation ".[train]"
CMD ["m5", "train", "all", "--preset", "default", "--catalog", "/data/catalog", "--out", "/bundles"]
