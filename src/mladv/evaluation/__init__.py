"""Evaluation building blocks: the corruption benchmark protocol (:mod:`.corruptions`), the
statistics a reader trusts (:mod:`.stats`: patient-level bootstrap CIs, paired A/B, McNemar) and
multi-label metrics (:mod:`.multilabel`) and the A/B comparison of two models (:mod:`.compare`)."""
