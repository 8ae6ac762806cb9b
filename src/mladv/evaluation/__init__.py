"""Evaluation building blocks: the corruption benchmark protocol (:mod:`.corruptions`), the
statistics a reader trusts (:mod:`.stats`: patient-level bootstrap CIs, paired A/B, McNemar),
multi-label metrics (:mod:`.multilabel`) and their card (:mod:`.multilabel_report`), and the A/B
comparison of two models (:mod:`.compare`)."""
