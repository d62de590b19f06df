"""Sets of neurons: selection from scores, set algebra, overlap, random placebos, save / load.

A [`NeuronMask`][tl_capability.masks.NeuronMask] is a boolean ``[layer, d_mlp]`` tensor plus where
it came from (the model's shape and name, the neuron site, how it was selected). Selection rules:

- ``sigma``: the capability-localization rule (Huang et al., ICLR 2025),
  ``|s − mean(s)| > σ · std(s)`` over all neurons of all layers. The poster writes the variance;
  we read it as the standard deviation (the variance is not in the scores' units).
- ``top_k`` / ``quantile``: the largest scores.

``side`` says which tail counts: ``"positive"`` (the default: neurons that *raise* the answer's
probability, the ones whose removal should hurt), ``"negative"``, or ``"both"`` (``|s|``, the
poster's literal rule). The defaults, ``sigma=2`` on the positive side, were chosen by measuring
on the zoo model and on two sibling models trained with other seeds and shapes; see
``docs/findings.md`` (the paper's σ = 3, 6, 12 keep too few neurons of a small model to matter).
- ``fraction_of_max``: the knowledge-neuron coarse rule (Dai et al., ACL 2022),
  ``s > t · max(s)``, applied per prompt by [`coarse_masks`][tl_capability.masks.coarse_masks];
  [`refine`][tl_capability.masks.refine] then keeps the neurons shared by more than a fraction ``p``
  of one fact's prompts.

Masks give intervention hooks ([`NeuronMask.hooks`][tl_capability.masks.NeuronMask.hooks], see
[`tl_capability.interventions`][tl_capability.interventions]) that compose with any TransformerLens
analysis.
"""

from tl_capability.masks._mask import NeuronMask, random_controls
from tl_capability.masks._selection import DEFAULT_SIGMA, coarse_masks, refine, select

__all__ = ["DEFAULT_SIGMA", "NeuronMask", "coarse_masks", "random_controls", "refine", "select"]
