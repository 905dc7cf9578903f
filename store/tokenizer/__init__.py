"""The offline semantic-ID pipeline: embeddings of each high-cardinality feature -> K semantic IDs.

- ``embeddings``: where the embeddings come from (content, text, SASRec, learned);
- ``learned``: the rows a raw-ID model learned (a short FM, or a finished trainer run);
- ``sasrec``: SASRec item embeddings from the history lists (``python -m store.tokenizer.sasrec``);
- ``quantizers``: OPMQ, RQ-VAE and OPQ;
- ``pipeline``: the whole stage, ``python -m store.tokenizer --data DIR --out SIDS``.
- ``config``: the stage's options (torch-free; ``launch.compare`` embeds them as ``--tokenizer.*``).

Its output, the SID folder (``store.sid``), is the contract with the models: they never import this
package.
"""
