"""Attribution of answers to MLP neurons: integrated gradients, gradient × activation, NeurGrad.

Every method scores neuron ``(l, j)`` for each answer token of each sample, teacher forced:
``z_m = prompt ⊕ answer[:m]``, ``a_m`` the neuron's activation at the last position of ``z_m``,
``P_m = P(answer[m] | z_m)`` (``metric="prob"``) or its log (``metric="logprob"``). Each such
forward (and backward) pass input, one answer token read at one position, is a *row*. A sample's
score is the mean over its answer tokens; [`NeuronScores`][tl_capability.attribution.NeuronScores]
holds the mean and standard deviation over samples.

- ``"ig"``: integrated gradients from a zero baseline, one layer scaled at a time (Dai et al.,
  ACL 2022; the contribution score of capability localization, Huang et al., ICLR 2025):
  ``a_m · (1/S) Σ_k ∂P_m/∂a (a ← α_k a_m)``. ``rule="midpoint"`` (default) uses
  ``α_k = (k - ½)/S``; Dai et al.'s code uses the left Riemann sum ``α_k = (k - 1)/S``
  (``rule="left"``), which includes the baseline and, with one step, degenerates to the
  gradient at zero.
- ``"grad_x_act"``: ``a_m · ∂P_m/∂a_m`` at the clean run (attribution patching). Each answer
  token gets its own row, so the gradient is that of ``P_m`` alone, not of later tokens too.
- ``"neurgrad"``: ``∂P_m/∂a_m · sign(a_m)`` with ``sign(0) = +1`` (the direction
  [`empirical_neg`][tl_capability.empirical_neg.empirical_neg] shifts along), the NeurGrad
  estimate of the neuron empirical gradient (Zhao et al., ACL 2025).
- ``"activation"``: ``|a_m|``, a baseline.

With ``positions="answer"`` (the papers' choice, the default) only the activation at the last
position of ``z_m`` is changed or differentiated; positions after it are not in ``z_m`` and are
dropped from the row. ``positions="all"`` scales the neuron at every position at once, as erasure
removes it: for one sample and layer ``l``, ``a ← α·a`` at every real position, the metric read
at every answer position, ``IG_j = Σ_p a_pj · (1/S) Σ_k ∂f/∂a_pj (α_k)``; with ``S → ∞`` the
scores of one layer sum to the effect of zeroing the whole layer (``docs/methods.md``).

The engine behind it is private: the rows (``_rows``, ``_row_gradients``), layered rows, the
all-position rows, the first call's checks, checkpoints and the distributed sum
(``docs/architecture.md``).
"""

from tl_capability.attribution._attribute import AttributionConfig, attribute
from tl_capability.attribution._methods import ig_alphas
from tl_capability.attribution._scores import NeuronScores, neuron_order

__all__ = ["AttributionConfig", "NeuronScores", "attribute", "ig_alphas", "neuron_order"]
