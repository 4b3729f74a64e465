"""PiSA's self-augmenting data engine: the policy annotates unlabeled clouds, a cross-modal check keeps, repairs or
drops each field, and the policy is retrained on what held (`pointrl engine`)."""
