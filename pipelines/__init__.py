"""Orchestration around the `compress` library: Prefect flow and tasks, MLflow tracking and registry.

Thin by design: the flow turns a recipe into `compress` stage calls and records what they return.
`compress/` itself never imports Prefect or MLflow.
"""

import os

# Offline and quiet by default; an explicit setting in the environment wins.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The temporary local API migrates a new database on its first start: longer than Prefect's 20 s
# default on a small machine (seen: a traceback on the first run after `make install`).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
