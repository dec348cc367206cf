"""Models-from-code file of every registered lethe model (logged by path, copied, never pickled).

`mlflow.pyfunc.load_model` runs this file; the model it sets loads the version's lethe checkpoint
weights-only (see lethe/tracking/model_format.py). lethe itself never runs it: it reads the checkpoint.
Nothing else imports this module.
"""

from mlflow.models import set_model

from lethe.tracking.model_format import LetheCheckpointModel

set_model(LetheCheckpointModel())
