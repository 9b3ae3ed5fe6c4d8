"""Package data installed as ``segstream.config``: the example settings (``flights.yaml``, ...)
and the Prometheus rules and Grafana dashboards that ``segstream demo`` and the compose stack use.
Read them with :mod:`importlib.resources` (see :func:`segstream.shared.settings.example_names`)."""
