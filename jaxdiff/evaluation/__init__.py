"""Evaluation: Frechet distances (FID with a Flax FID-InceptionV3, and in the features of a
small classifier for small data sets), Inception Score, test-set bits/dim, and generated
words against a word list (`words`).

`jaxdiff.job.evaluation` ties them to a training config and model (and holds
`evaluate_during_training`); `python -m jaxdiff.evaluate` is the command.
"""

from jaxdiff.evaluation.bpd import BpdResult, dataset_bound, dataset_bpd
from jaxdiff.evaluation.classifier import (FeatureClassifier, TrainedClassifier,
                                           load_or_train_classifier, train_classifier)
from jaxdiff.evaluation.frechet import (FeatureStatistics, cached_statistics,
                                        feature_statistics, frechet_distance,
                                        frechet_distance_from_stats, load_statistics,
                                        save_statistics)
from jaxdiff.evaluation.inception import (InceptionV3, inception_outputs,
                                          load_inception_variables, state_dict_to_variables)
from jaxdiff.evaluation.inception_score import inception_score

# The metric names that configs and `python -m jaxdiff.evaluate --metrics` take.
METRICS = ("bpd", "fid", "classifier_fd", "words")

__all__ = [
    "BpdResult", "METRICS", "FeatureClassifier", "FeatureStatistics", "InceptionV3", "TrainedClassifier",
    "cached_statistics", "dataset_bound", "dataset_bpd", "feature_statistics", "frechet_distance",
    "frechet_distance_from_stats", "inception_outputs", "inception_score",
    "load_inception_variables", "load_or_train_classifier", "load_statistics",
    "save_statistics", "state_dict_to_variables", "train_classifier",
]
