"""Metrics as pure reducers, bootstrap confidence intervals, statistical tests and ``evaluate``.

Every metric is a frozen record built with ``pred=`` and ``target=`` keys; its state
lives outside it: ``init() -> state``, ``update(state, batch) -> state``,
``merge(a, b) -> state`` (shards, DDP ranks: see :func:`gather`), ``compute(state)`` —
the :class:`fusefn.protocols.Reducer` protocol. :class:`Metric` adds what
:class:`Bootstrap` and :class:`GroupBy` call on the metric they wrap.

>>> import numpy as np
>>> batch = {"score": np.array([0.1, 0.4, 0.35, 0.8]), "y": np.array([0, 0, 1, 1])}
>>> evaluate({"auc": AUCROC(pred="score", target="y")}, batch)
{'auc': 0.75}
"""

from fusefn.metrics._base import Metric, UndefinedMetricWarning
from fusefn.metrics.bootstrap import Bootstrap
from fusefn.metrics.calibration import ECE
from fusefn.metrics.classification import (
    AUCROC,
    MCC,
    Accuracy,
    AveragePrecision,
    BalancedAccuracy,
    ConfusionMatrix,
    PartialAUC,
    ROCCurve,
)
from fusefn.metrics.comparison import delong, mcnemar, paired_bootstrap
from fusefn.metrics.detection import BoxDetection
from fusefn.metrics.distributed import gather
from fusefn.metrics.evaluation import evaluate
from fusefn.metrics.group import GroupBy
from fusefn.metrics.multilabel import (
    MultiLabelAUC,
    MultiLabelAveragePrecision,
    MultiLabelSensitivity,
    MultiLabelSpecificity,
)
from fusefn.metrics.operating import SensitivityAtSpecificity, SpecificityAtSensitivity, YoudenJ
from fusefn.metrics.regression import MAE, MSE, R2, RMSE, Pearson, Spearman
from fusefn.metrics.segmentation import Dice, Hausdorff95, IoU, VolumeDifference
from fusefn.metrics.stats import DeLong, McNemar
from fusefn.metrics.surface import ASSD, SurfaceDice
from fusefn.metrics.survival import (
    CumulativeDynamicAUC,
    HarrellC,
    IntegratedBrierScore,
    KaplanMeier,
    LogRank,
    UnoC,
)

__all__ = [
    "AUCROC",
    "ECE",
    "MCC",
    "Accuracy",
    "AveragePrecision",
    "BalancedAccuracy",
    "Bootstrap",
    "BoxDetection",
    "ConfusionMatrix",
    "DeLong",
    "ASSD",
    "Dice",
    "GroupBy",
    "Hausdorff95",
    "SurfaceDice",
    "VolumeDifference",
    "IoU",
    "McNemar",
    "Metric",
    "PartialAUC",
    "ROCCurve",
    "UndefinedMetricWarning",
    "evaluate",
    "gather",
    "MAE",
    "MSE",
    "RMSE",
    "R2",
    "Pearson",
    "Spearman",
    "MultiLabelAUC",
    "MultiLabelAveragePrecision",
    "MultiLabelSensitivity",
    "MultiLabelSpecificity",
    "HarrellC",
    "UnoC",
    "CumulativeDynamicAUC",
    "IntegratedBrierScore",
    "KaplanMeier",
    "LogRank",
    "YoudenJ",
    "SensitivityAtSpecificity",
    "SpecificityAtSensitivity",
    "delong",
    "mcnemar",
    "paired_bootstrap",
]
