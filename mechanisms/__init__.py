"""Privacy mechanisms and protocols that plug into the decentralized engine.

Importing this package registers its protocols in ``privlab.protocol.PROTOCOLS``.
"""

from privlab.mechanisms.gossip import DecentralizedSGD, EpidemicLearning

__all__ = ["DecentralizedSGD", "EpidemicLearning"]
