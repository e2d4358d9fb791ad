"""Built-in attacks; each module registers its behaviours on import.

========================  ==========================================================
name                      module
========================  ==========================================================
badnets                   :mod:`clients.attacks.badnets`
dba                       :mod:`clients.attacks.dba`
model_replacement         :mod:`clients.attacks.model_replacement`
pretrained                :mod:`clients.attacks.pretrained` (+ ``craft_backdoor``)
code_poisoning            :mod:`clients.attacks.code_poisoning`
bitflip, bitflip_random   :mod:`clients.attacks.bitflip`
feature_collision         :mod:`clients.attacks.feature_collision`
label_flip                :mod:`clients.attacks.label_flip`
sign_flip                 :mod:`clients.attacks.sign_flip`
gaussian                  :mod:`clients.attacks.gaussian`
alie, ipm, minmax, minsum :mod:`clients.attacks.omniscient` (omniscient, server stage)
========================  ==========================================================
"""

from clients.attacks import (  # noqa: F401
    badnets,
    bitflip,
    code_poisoning,
    dba,
    feature_collision,
    gaussian,
    label_flip,
    model_replacement,
    omniscient,
    pretrained,
    sign_flip,
)
from clients.attacks.pretrained import craft_backdoor  # noqa: F401
