"""Privacy attacks against decentralized learning (membership, inversion, linkability, source)."""
