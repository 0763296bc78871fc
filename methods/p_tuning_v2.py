"""P-tuning v2: Liu et al., "P-Tuning: Prompt Tuning Can Be Comparable to Fine-tuning
Across Scales and Tasks", ACL 2022 (https://aclanthology.org/2022.acl-short.8; arXiv
2110.07602, "P-Tuning v2").

"Deep prompt tuning": the same per-layer key/value prefixes as Prefix-Tuning, but trained
directly, without the MLP reparameterisation (the paper finds the MLP's benefit task
dependent and drops it by default), usually with a classification head. So this is
``prefix_tuning`` with ``projection = False`` as the default and its own learning rate;
everything else (cache mechanism, inits, folding, generate) is inherited.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from methods.base import register_method
from methods.prefix_tuning import PrefixTuning, PrefixTuningConfig


@dataclass(frozen=True)
class PTuningV2Config(PrefixTuningConfig):
    projection: bool = field(default=False, metadata={
        "help": "P-tuning v2 trains the prefixes directly; True adds Li & Liang's MLP"})


@register_method("p_tuning_v2")
class PTuningV2(PrefixTuning):
    paper = "Liu et al., ACL 2022, https://aclanthology.org/2022.acl-short.8"
    Config = PTuningV2Config
    config: PTuningV2Config
    # measured (MiniLM-L6, SST-2, P=20, 150 steps x 32, seed 0, 300 dev examples): lr 1e-2
    # 0.707, 3e-2 0.763; directly trained prefixes need a much larger lr than the MLP path
    default_lr = 3e-2
