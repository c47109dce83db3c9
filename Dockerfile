FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY leadrelay leadrelay
COPY intake intake
COPY rules rules
COPY models models
COPY workers workers
RUN pip install --no-cache-dir . && useradd --system leadrelay
USER leadrelay
CMD ["leadrelay", "api", "--host", "0.0.0.0"]
