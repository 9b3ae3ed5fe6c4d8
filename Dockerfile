# The segstream application image: one image for train, worker, monitor and simulate.
#   docker build -t segstream .
#   docker run --rm segstream --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# libgomp1: OpenMP runtime of the xgboost wheel (not in the slim base).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin segstream

WORKDIR /app

# Dependencies in their own layer, pinned: requirements/image.txt is the resolved closure of
# pyproject's runtime dependencies (`make lock`, uv) with the CPU-only XGBoost wheel
# (xgboost-cpu: the same `xgboost` module without ~700 MB of CUDA and NCCL libraries). Every
# dependency is listed, so nothing is resolved at build time (--no-deps); the layer is
# rebuilt only when the lock file changes.
COPY requirements/image.txt ./requirements/image.txt
RUN pip install --no-deps -r requirements/image.txt \
    && python -c "import xgboost, numba, confluent_kafka"

# The source, then the package itself (no dependency resolution: they are installed above).
COPY README.md ./
COPY shared ./shared
COPY training ./training
COPY services ./services
COPY config ./config
COPY segstream ./segstream
# (pyproject names `xgboost`; the image has it as xgboost-cpu, so no resolution here either.)
RUN pip install --no-deps . \
    && mkdir -p /app/artifacts /app/reports /app/.cache/numba \
    && chown -R segstream:segstream /app/artifacts /app/reports /app/.cache

USER segstream
# numba's compiled kernels live in a directory the service user owns, filled at build time by
# `segstream warmup` (synthetic data, no broker), so a new container does not compile them.
ENV NUMBA_CACHE_DIR=/app/.cache/numba
RUN segstream --log-level WARNING warmup
# The default settings are the packaged flights example (segstream config --example flights);
# its relative paths (.cache/, artifacts/) resolve here.
ENTRYPOINT ["segstream"]
CMD ["--help"]
