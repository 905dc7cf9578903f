"""STORE and the ranking models that compare it with raw IDs.

- ``store.tokenizer``: the offline semantic-ID pipeline (``python -m store.tokenizer``);
- ``store.sid``: the SID tables it writes, and the data-time transform that swaps raw IDs for SIDs:
  the contract between the pipeline and the models;
- ``store.models``: the model zoo (``store.models.zoo.build_model``): STORE, its raw-ID twin, the
  baselines, attention, rotation, FLOPs.
"""
