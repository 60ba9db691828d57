"""The registered SATI model, logged to MLflow as code (``python_model`` = this file), so loading
it never unpickles anything: ``mlflow.pyfunc.load_model(uri).predict(frame)``.

Artifacts: ``checkpoint`` (best.pt, read with ``weights_only``; it holds the resolved config, also
shown as ``config``) and, for Hugging Face text encoders, ``text_encoder`` (config and tokenizer).
Input and output columns: ``sati.predictor``.
"""

import mlflow.pyfunc
import pandas as pd
from mlflow.models import set_model


class SATIPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper around ``sati.predictor.SATIPredictor``."""

    def load_context(self, context):
        from sati.predictor import SATIPredictor

        self.predictor = SATIPredictor(context.artifacts["checkpoint"], context.artifacts.get("text_encoder"))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.predictor.predict_frame(model_input)


set_model(SATIPyfunc())
