"""Post-training ownership watermark from a single OoD image (server plugin ``watermark``).

Method: Yu, Hong, Zhang, Wang, Wang & Zhou, "Safe and Robust Watermark
Injection with a Single OoD Image", ICLR 2024 (arXiv 2309.01786); reference
code github.com/illidanlab/Single_oodwatermark (read, not copied).

The server never sees the clients' data. It builds a surrogate set of many
augmented patches of one out-of-distribution image
(:func:`fedsec.data.surrogate.surrogate_patches`), stamps the owner's secret
trigger on a fraction of them (``poison_ratio``, 10 %) labelled ``target``,
keeps the global model's own (temperature-softened) predictions as soft labels
on the rest, and fine-tunes the global model on that set with a small learning
rate and adversarial weight perturbation (:mod:`.inject`).

Choice of gamma (``gamma="auto"``, the default): the paper's gamma = 0.1 is for
WRN-16-2 / ResNet-18 (0.69 M / 11 M kernel weights). Small models collapse at
0.1: on the 38 k-weight 8x8 digits CNN the victim falls to 0.08 accuracy; how
much a small model tolerates also depends on how well it is trained (30 epochs
on a well-trained CNN: 0.05 is still harmless; 12 epochs on a less-trained
one: 0.028 already costs 5-15 points, 0.015 costs <= 0.6). ``auto`` therefore
shrinks gamma with the number ``P`` of perturbed kernel weights::

    gamma = max(0.01, 0.1 * min(1, P / 5e5) ** 0.75)

i.e. 0.1 for WRN-16-2 and larger, 0.045 for WRN-16-1, 0.0145 for the digits
CNN (measurements: experiments/plugins/watermark.md).

The secret trigger is drawn from the owner's key (``trigger="keyed_patch"``:
an s x s black/white pattern at a random position; :mod:`.keys`), so that
ownership can be decided by ranking it against random control triggers of the
same kind: a model backdoored towards the same class by someone else, or
watermarked by another owner, is claimed with probability at most ``alpha``
(:mod:`.verify`, which also keeps the paired and the reference Welch tests).
Verification uses half of the test split; the other half is the attacker's
for the removal attacks (:mod:`.removal`). The markdown table: :mod:`.report`.

``at="end"`` injects once in ``on_run_end`` (the hook can not replace the final
model, so the watermarked one is written to ``<run_dir>/watermarked.safetensors``
next to the table ``watermark.md``); ``at="every_round"`` re-embeds in
``on_round_end`` from ``from_round`` on (WAFFLE-style; the returned model is
what the next round sends) and ``on_run_end`` only verifies, with the global
model before the first injection as the un-watermarked original. Deviation
from the reference code: BatchNorm layers stay in eval mode while fine-tuning
(running statistics are not overwritten by OoD patches).
"""

from fedsec.plugins.watermark.inject import auto_gamma, perturbed_parameters, project_gamma_ball
from fedsec.plugins.watermark.keys import blend_pattern, commitment, control_panel, trojan_square
from fedsec.plugins.watermark.plugin import TRIGGERS, Watermark
from fedsec.plugins.watermark.removal import ATTACKS, last_linear, magnitude_prune, train_supervised
from fedsec.plugins.watermark.report import format_table
from fedsec.plugins.watermark.verify import Verifier, rank_p_value

__all__ = [
    "Watermark", "TRIGGERS", "ATTACKS", "format_table", "project_gamma_ball", "auto_gamma",
    "perturbed_parameters", "trojan_square", "blend_pattern", "commitment", "control_panel",
    "magnitude_prune", "train_supervised", "last_linear", "Verifier", "rank_p_value",
]
