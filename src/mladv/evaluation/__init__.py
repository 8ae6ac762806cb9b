"""Evaluation building blocks: the corruption benchmark protocol (:mod:`.corruptions`) and the
statistics a reader trusts (:mod:`.stats`: patient-level bootstrap CIs, paired A/B, McNemar), multi-label
metrics (:mod:`.multilabel`)."""
