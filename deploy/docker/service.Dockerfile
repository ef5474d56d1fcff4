# Serving image: the shared core + FastAPI, no torch.
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
RUN pip install --no-cache-dir ".[serve]"
ENV M5_HOST=0.0.0.0 M5_PORT=8000
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["m5", "serve"]
