"""Built-in attacks; each module registers its behaviours on import.

Every behaviour is a frozen keyword-only dataclass (its fields are its
hyperparameters) overriding the stages of :mod:`fedsec.clients.base`; what one
client call carries between stages lives in ``task.state``.

========================  ==========================================================
name                      module
========================  ==========================================================
badnets                   :mod:`fedsec.clients.attacks.badnets`
dba                       :mod:`fedsec.clients.attacks.dba`
model_replacement         :mod:`fedsec.clients.attacks.model_replacement`
pretrained                :mod:`fedsec.clients.attacks.pretrained` (+ ``craft_backdoor``)
code_poisoning            :mod:`fedsec.clients.attacks.code_poisoning`
bitflip, bitflip_random   :mod:`fedsec.clients.attacks.bitflip`
feature_collision         :mod:`fedsec.clients.attacks.feature_collision`
label_flip                :mod:`fedsec.clients.attacks.label_flip`
sign_flip                 :mod:`fedsec.clients.attacks.sign_flip`
gaussian                  :mod:`fedsec.clients.attacks.gaussian`
alie, ipm, minmax, minsum :mod:`fedsec.clients.attacks.omniscient` (Colluding: ``craft``)
fang                      :mod:`fedsec.clients.attacks.fang` (Colluding, adaptive)
agr_tailored              :mod:`fedsec.clients.attacks.agr_tailored` (Colluding, adaptive)
neurotoxin                :mod:`fedsec.clients.attacks.neurotoxin`
========================  ==========================================================
"""

from fedsec.clients.attacks import (  # noqa: F401
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
from fedsec.clients.attacks import fang  # noqa: F401,E402
from fedsec.clients.attacks import agr_tailored  # noqa: F401,E402
from fedsec.clients.attacks import neurotoxin  # noqa: F401,E402
from fedsec.clients.attacks.pretrained import craft_backdoor  # noqa: F401
