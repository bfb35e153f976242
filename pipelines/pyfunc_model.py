"""MLflow models-from-code entry point of the registered model (see `pipelines.registry`).

MLflow runs this file when the model is logged and when it is loaded; `compress` and
`pipelines` are importable then because they travel with the model as code paths.
"""

import mlflow

from pipelines.registry import PrunedClassifier

mlflow.models.set_model(PrunedClassifier())
