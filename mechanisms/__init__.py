"""Privacy mechanisms and protocols that plug into the decentralized engine."""
