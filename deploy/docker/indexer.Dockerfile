# Indexer image: the shared core (ONNX Runtime, FAISS, Kafka and Redis clients), no torch.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY m5core m5core
COPY service service
COPY indexer indexer
COPY trainer trainer
COPY catalog catalog
COPY evaluation evaluation
COPY m5cli m5cli
RUN pip install --no-cache-dir ".[index]"
EXPOSE 9108
CMD ["m5", "index", "run"]
