# Serving image: the shared core + FastAPI, no torch.
FROM python:3.11-slim
WORKDIR /app
# The whole source tree (.dockerignore keeps out tests, docs, caches and local state): every package that
# pyproject.toml installs is there, as tests/deploy/test_wheel.py checks for the wheel.
COPY . .
RUN pip install --no-cache-dir ".[serve]"
ENV M5_HOST=0.0.0.0 M5_PORT=8000
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
RUN useradd --system --no-create-home m5
USER m5
CMD ["m5", "serve"]
