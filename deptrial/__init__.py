"""deptrial: Bayesian analysis of depression trials with biomarkers (the Python entry points).

    import deptrial
    trial = deptrial.load_dataset(deptrial.DEFAULT_DATASET)   # or deptrial.from_adam("adsl.xpt", "adqs.xpt", "MADRS")
    run = deptrial.fit_trial(trial, ["null", "treatment", "headline"], deptrial.SamplerSettings(seed=1), out="results")
    print(run.estimates)                        # each row with its estimand (population, variable, intercurrent events, summary)
    print(run.contrasts)                        # per-arm means, each arm vs control, contrasts asked for (contrasts=[...]), P(best)
    deptrial.sensitivity("results/treatment/idata.nc")   # the effect under other missing-data assumptions, responders, prior sensitivity

See README.md and docs/ for the models, the data format and the outputs.
"""

from data import DEFAULT_DATASET, DatasetError, load_dataset
from data.adam import AdamOptions
from data.atomic import OutputBusy
from inference.sampling import SamplerSettings
from inference.storage import SavedFitError, load_fit
from models import ModelDataError

from .api import (
    DEFAULT_MODELS,
    FinishingFailed,
    ModelFit,
    RunFailed,
    RunResult,
    SamplingFailed,
    fit_trial,
    from_adam,
    list_models,
    rediagnose,
    sensitivity,
)

__all__ = [
    "AdamOptions",
    "DEFAULT_DATASET",
    "DEFAULT_MODELS",
    "DatasetError",
    "FinishingFailed",
    "ModelDataError",
    "ModelFit",
    "OutputBusy",
    "RunFailed",
    "RunResult",
    "SamplerSettings",
    "SamplingFailed",
    "SavedFitError",
    "fit_trial",
    "from_adam",
    "list_models",
    "load_dataset",
    "load_fit",
    "rediagnose",
    "sensitivity",
]
