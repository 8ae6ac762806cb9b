"""The transfer experiment (SPEC "Attack success", Table 1 and Fig. 3), behind ``mladv transfer``.

One source model and several target models are trained on the same training images (or loaded
from checkpoints); every attack is crafted on the source at the same eps; each model's success
rate is counted over the test images it classifies correctly when clean. Per attack it also
measures time, queries (RayS), the norms of delta, SSIM / PSNR, what BM3D denoising leaves of
the attack, and how much of |delta| lies in the source's Grad-CAM region. With ``seeds`` the
targets are trained once per target seed and the same adversarial images are scored on each
seed's targets (black-box rates as mean ± std over seeds); the paper's sentence (MLAdv's
black-box average vs FGSM, GAMA, RayS) is decided by paired patient-level bootstrap CIs.

Shaped like :mod:`mladv.experiment`: ``config`` (the YAML), ``run`` (the resumable steps),
``measure`` (success tables, BM3D, CAM), ``claims`` (the paper against our numbers), ``report``
(Fig. 3, tables, files).
"""
from .claims import claims
from .config import AttackSpec, ModelSpec, TransferConfig, dump_config, load_config
from .report import main_table, write_reports
from .run import run_transfer

__all__ = ["AttackSpec", "ModelSpec", "TransferConfig", "claims", "dump_config", "load_config",
           "main_table", "run_transfer", "write_reports"]
