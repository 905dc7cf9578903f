"""The model zoo: STORE, its raw-ID twin and the baselines; build them with ``store.models.zoo.build_model``."""
