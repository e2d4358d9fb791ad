"""ABD: Anti-Backdoor Data-free knowledge distillation of the global model.

Hong, Zeng, Yu, Lyu, Jia, Zhou, "Revisiting Data-Free Knowledge Distillation
with Poisoned Teachers", ICML 2023 (arXiv 2306.02368; reference code
github.com/illidanlab/ABD). At the end of a run the server distils the global
model (the possibly poisoned *teacher*) into a fresh *student* without any
training data, and ABD keeps the teacher's backdoor from travelling along.

One concept per module:

- :mod:`.config`: :class:`ABDConfig`, the options and their sources (paper,
  reference code); ``seed`` defaults to the scenario's ``run.seed``.
- :mod:`.kd`: :func:`distill`, the one training loop of both baselines, plain or
  with ABD; the student objective :func:`student_loss`.
- :mod:`.generator`: the ``"generator"`` baseline, ZSKT (Micaelli & Storkey,
  NeurIPS 2019): the generator, its adversarial step and ABD's penalty on it.
- :mod:`.ood`: the ``"ood"`` baseline: one-image transfer set with CutMix
  (the reference's ``vanilla_kd_ood``).
- :mod:`.vaccine`: Shuffling Vaccine (Sec. 4.1): shuffled teachers, the
  suspicion score ``S(x)``, ``phi(x)``, loss weights, selection by tail ratio.
- :mod:`.retrospection`: Self-Retrospection (Sec. 4.2, Algorithm 1): the
  universal perturbation and the implicit hypergradient.
- :mod:`.table`: the Table 1 experiment (teacher vs KD vs KD+ABD) and its table.
- :mod:`.plugin`: the registered ``abd`` plugin and its student files.

Deviations from the reference: no attention-transfer term (``AT_beta``; fedsec
models expose no activations); the student loss is a per-sample weighted batch
mean rather than two separately averaged groups; KL is summed over classes
(:mod:`.divergence`). Results and their scale: ``experiments/plugins/abd.md``.
"""

from __future__ import annotations

from fedsec.plugins.abd.config import KD_METHODS, SR_MODES, SV_WEIGHTINGS, ABDConfig
from fedsec.plugins.abd.divergence import kl_per_sample
from fedsec.plugins.abd.evaluation import evaluate
from fedsec.plugins.abd.generator import Generator, GeneratorSource, malicious_synthesis
from fedsec.plugins.abd.kd import DistillOutcome, TransferSource, distill, student_loss
from fedsec.plugins.abd.ood import TransferSetSource, cutmix, surrogate_transfer_set
from fedsec.plugins.abd.plugin import ABD, STUDENT_FILES, save_student
from fedsec.plugins.abd.retrospection import sr_find_delta, sr_hypergradient, sr_student_step
from fedsec.plugins.abd.table import compare, markdown_table
from fedsec.plugins.abd.vaccine import (
    ShuffledTeacher,
    Vaccine,
    channel_head,
    shuffle_channels,
    suspicion_score,
    suspicious,
    sv_kappa,
    sv_weights,
    tail_ratio,
)

__all__ = [
    "ABD",
    "ABDConfig",
    "DistillOutcome",
    "Generator",
    "GeneratorSource",
    "KD_METHODS",
    "SR_MODES",
    "STUDENT_FILES",
    "SV_WEIGHTINGS",
    "ShuffledTeacher",
    "TransferSetSource",
    "TransferSource",
    "Vaccine",
    "channel_head",
    "compare",
    "cutmix",
    "distill",
    "evaluate",
    "kl_per_sample",
    "malicious_synthesis",
    "markdown_table",
    "save_student",
    "shuffle_channels",
    "sr_find_delta",
    "sr_hypergradient",
    "sr_student_step",
    "student_loss",
    "surrogate_transfer_set",
    "suspicion_score",
    "suspicious",
    "sv_kappa",
    "sv_weights",
    "tail_ratio",
]
