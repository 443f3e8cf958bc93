"""The training loss: the task losses of the labels (tasks.py), mixed with the divergence from
a teacher's softened probabilities when a run distils (``train.distill_from``; the teacher's
probabilities are computed once per training sample by teacher.py)."""
from pipeline.train.losses.tasks import (CLASSIFICATION_TASKS, IGNORE_INDEX, DensityWeights, MultitaskLoss,
                                         build_loss, class_weights, classification_loss, distillation_loss,
                                         regression_loss)

__all__ = ["CLASSIFICATION_TASKS", "IGNORE_INDEX", "DensityWeights", "MultitaskLoss", "build_loss", "class_weights",
           "classification_loss", "distillation_loss", "regression_loss"]
