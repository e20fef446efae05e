# syntax=docker/dockerfile:1
# signal-bridge: small multi-stage image. Dependencies come from uv.lock; runs as a non-root user.

FROM python:3.11-slim AS build
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never PIP_NO_CACHE_DIR=1
# uv pinned: the lock file's format and resolution are uv's; a new uv must not change the build.
RUN pip install uv==0.13.9
WORKDIR /app
# Dependencies first (cached while only the code changes), then the project itself.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY bridge ./bridge
RUN uv sync --frozen --no-dev

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin bridge
WORKDIR /app
COPY --from=build /app /app
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 BRIDGE_HEALTH_PORT=8081
USER 10001:10001
EXPOSE 8081
# Ready = Redis reachable, group present, circuit closed, not shutting down.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8081/readyz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["signal-bridge"]
CMD ["run"]
