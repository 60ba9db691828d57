"""The registered SATI model, logged to MLflow as code (``python_model`` = this file), so loading
it never unpickles anything: ``mlflow.pyfunc.load_model(uri).predict(frame)``.

Artifacts: ``checkpoint`` (best.pt, read with ``weights_only``; it holds the resolved config, also
shown as ``config``) and, for Hugging Face text encoders, ``text_encoder`` (config and tokenizer).
Input and output columns: ``sati.predictor``. An input it refuses (a non-finite feature, a wrong shape)
raises an ``MlflowException`` with ``INVALID_PARAMETER_VALUE``: ``mlflow models serve`` answers it with
HTTP 400 and the message, which names the row and the column.
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
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from sati.data.h5format import DataError

        try:
            return self.predictor.predict_frame(model_input)
        except DataError as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None


set_model(SATIPyfunc())
