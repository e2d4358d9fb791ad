"""Audit detectors: analyse a trained model, or a data set with a model trained on it.

Registry :data:`DETECTORS` (``name -> class``); the contract is in
:mod:`fedsec.audit.base`. Built in:

============================  =====  ===================================================
name                          kind   method
============================  =====  ===================================================
``neural_cleanse``            model  Wang et al. S&P 2019: minimal trigger per class, MAD
``fine_pruning``              model  Liu et al. RAID 2018: prune dormant channels, fine-tune
``activation_clustering``     data   Chen et al. 2019: 2-means on ICA-reduced activations
``spectral_signatures``       data   Tran et al. NeurIPS 2018: top singular direction
``frequency``                 data   Zeng et al. ICCV 2021: DCT-spectrum classifier
============================  =====  ===================================================

Use them from Python (``get_detector(name, **params).audit(AuditTarget(...))``),
from the command line (``fedsec audit MODEL --detector NAME``, :mod:`fedsec.audit.runner`)
or, for the model detectors, as server plugins (:mod:`fedsec.audit.plugins`,
with ``bitflip_deploy``, the post-deployment bit-flip attack); the data detectors
also as the ``sanitizing`` client behaviour (:mod:`fedsec.audit.sanitizing`,
registered when imported: ``run.imports = ["fedsec.audit.sanitizing"]``).
Measured effects: ``experiments/plugins/audit.md``.
"""

from fedsec.audit.base import (
    DETECTORS,
    AuditResult,
    AuditTarget,
    Detector,
    get_detector,
    register_detector,
)
from fedsec.audit import (  # noqa: E402,F401  (register the built-ins)
    activation_clustering,
    fine_pruning,
    frequency,
    neural_cleanse,
    spectral_signatures,
)

__all__ = ["DETECTORS", "AuditResult", "AuditTarget", "Detector", "get_detector", "register_detector"]
