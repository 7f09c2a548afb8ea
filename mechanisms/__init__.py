"""Privacy mechanisms and protocols that plug into the decentralized engine.

Importing this package registers its protocols in ``privlab.protocol.PROTOCOLS`` and its
gradient mechanisms in ``privlab.gradient.GRADIENT_MECHANISMS``.
"""

from privlab.mechanisms.cesar import Cesar
from privlab.mechanisms.dp_sgd import DPSGD
from privlab.mechanisms.gossip import DecentralizedSGD, EpidemicLearning
from privlab.mechanisms.local import LocalOnly
from privlab.mechanisms.muffliato import Muffliato
from privlab.mechanisms.muted_gossip import MutedGossip
from privlab.mechanisms.relative_gaussian import RelativeGaussian
from privlab.mechanisms.shatter import Shatter
from privlab.mechanisms.sparsification import SparseDPSGD
from privlab.mechanisms.zipdl import ZipDL

__all__ = [
    "Cesar",
    "DPSGD",
    "DecentralizedSGD",
    "EpidemicLearning",
    "LocalOnly",
    "Muffliato",
    "MutedGossip",
    "RelativeGaussian",
    "Shatter",
    "SparseDPSGD",
    "ZipDL",
]
