"""The reference implementations' own code (verl's `core_algos`, TRL's `GRPOTrainer`), called from the tests."""
