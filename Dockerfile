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

# Dependencies in their own layer: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The source, then the package itself (no dependency resolution: they are installed above).
COPY README.md ./
COPY shared ./shared
COPY training ./training
COPY services ./services
COPY config ./config
COPY segstream ./segstream
RUN pip install --no-deps . \
    && mkdir -p /app/artifacts /app/.cache/numba \
    && chown -R segstream:segstream /app/artifacts /app/.cache

USER segstream
# numba's compiled kernels live in a directory the service user owns, filled at build time by
# `segstream warmup` (synthetic data, no broker), so a new container does not compile them.
ENV NUMBA_CACHE_DIR=/app/.cache/numba
RUN segstream --log-level WARNING warmup
# The default settings are the packaged flights example (segstream config --example flights);
# its relative paths (.cache/, artifacts/) resolve here.
ENTRYPOINT ["segstream"]
CMD ["--help"]
