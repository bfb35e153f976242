"""`cli.py serve`: a recipe as a Prefect deployment of the compress flow, served by this process.

The deployment `compress/<name>` carries the recipe path and overrides as parameters, so the
Prefect UI lists it, runs it on its cron schedule, and lets a person start a run with other
parameters (another recipe, more overrides, `use_cache: false`). Each run is a subprocess of
this one, started in this process's folder (relative paths resolve there), tracked in MLflow
like `cli.py compress`. Serving needs a running Prefect server (PREFECT_API_URL).
"""

from __future__ import annotations

import os
from pathlib import Path

from compress.errors import UserError
from pipelines.flow import check, compress_flow

# Each run's subprocess logs like `cli.py compress` (INFO, on this process's console), and the
# library's lines (stages, epochs, registration) go to the flow run's logs in the UI too.
RUN_LOGGING = {"PREFECT_LOGGING_ROOT_LEVEL": "INFO", "PREFECT_LOGGING_EXTRA_LOGGERS": "compress,pipelines"}


def check_cron(cron: str | None) -> None:
    """A cron string Prefect accepts, else one line naming it."""
    if cron is None:
        return
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except ValueError:
        raise UserError(f"--cron {cron!r}: not a valid cron expression (e.g. '0 3 * * *')") from None


def serve_recipe(
    recipe_path: Path, overrides: list[str], name: str | None = None, cron: str | None = None
) -> None:
    """Check the recipe and the server, register the deployment, and serve it until interrupted."""
    from prefect.types.entrypoint import EntrypointType

    check_cron(cron)
    recipe = check(recipe_path, overrides, None, check_data=True, need_prefect_server=True)
    for key, value in RUN_LOGGING.items():
        os.environ.setdefault(key, value)  # read when each run's subprocess starts
    compress_flow.serve(
        name=name or recipe.name,
        cron=cron,
        parameters={"recipe_path": str(Path(recipe_path).resolve()), "overrides": overrides},
        description=f"{recipe.name}: {recipe.task} on {recipe.model}",
        tags=[recipe.name, recipe.task],
        entrypoint_type=EntrypointType.MODULE_PATH,  # pipelines.flow.compress_flow, importable anywhere
    )
