"""The synthetic shop: world, events, corruption and the Criteo format of the generate step."""
