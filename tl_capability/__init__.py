"""tl_capability: find the neurons behind a language model's capabilities, and edit them.

A TransformerLens plugin. It works on any model with MLP neuron hooks (TransformerLens 3.x
``HookedTransformer`` and 4.x ``TransformerBridge``) and ships a small trained model, the zoo
model (:mod:`tl_capability.zoo`), so that everything runs offline.

See the README for the quickstart and ``tutorials/`` for the methods.
"""

from tl_capability.attribution import NeuronScores, attribute, ig_alphas
from tl_capability.data import Batch, CapabilityDataset, TokenizedSample, batches, tokenize
from tl_capability.edits import EditHandle, edit_knowledge, erase_weights, finetune_neurons
from tl_capability.evaluate import accuracy, answer_correct, answer_probability
from tl_capability.interventions import ablate, answer_positions, mean_activations
from tl_capability.masks import NeuronMask, coarse_masks, refine, select
from tl_capability.neg import EmpiricalNEG, empirical_neg
from tl_capability.sites import NeuronSite, neuron_site, require_eval

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "CapabilityDataset",
    "EditHandle",
    "EmpiricalNEG",
    "NeuronMask",
    "NeuronScores",
    "NeuronSite",
    "TokenizedSample",
    "__version__",
    "ablate",
    "accuracy",
    "answer_correct",
    "answer_positions",
    "answer_probability",
    "attribute",
    "batches",
    "coarse_masks",
    "edit_knowledge",
    "empirical_neg",
    "erase_weights",
    "finetune_neurons",
    "ig_alphas",
    "mean_activations",
    "neuron_site",
    "refine",
    "require_eval",
    "select",
    "tokenize",
]
