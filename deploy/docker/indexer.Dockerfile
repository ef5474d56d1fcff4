# Indexer image: the shared core (ONNX Runtime, FAISS, Kafka and Redis clients), no torch.
FROM python:3.11-slim
WORKDIR /app
# The whole source tree (.dockerignore keeps out tests, docs, caches and local state): every package that
# pyproject.toml installs is there, as tests/deploy/test_wheel.py checks for the wheel.
COPY . .
RUN pip install --no-cache-dir ".[index]"
EXPOSE 9108
CMD ["m5", "index", "run"]
