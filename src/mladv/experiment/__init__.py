"""Augmentation experiments (SPEC section 2.1, Table 2, Figs. 4 and 5): configs, arms, metrics,
the resumable runner and the report."""
from .arms import ARMS, FULL_METHOD
from .config import ExperimentConfig, load_config
from .metrics import classification_metrics
from .run import report_experiment, run_experiment

__all__ = ["ARMS", "FULL_METHOD", "ExperimentConfig", "classification_metrics", "load_config",
           "report_experiment", "run_experiment"]
