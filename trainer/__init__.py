"""Distributed trainer: any model of the zoo, one process or many, CPU (gloo) or GPU (nccl).

    python -m trainer --data DIR --model store|id|dnn|deepfm|dcn|autoint|rankmixer|onetrans|fm|widedeep|gdcn|masknet|pepnet|ssr \\
        [--sids DIR] [--out OUT] [--epochs N] [--batch-size B] [--checkpoint.every N] [--resume] \\
        [--pipeline/--no-pipeline] [--config run.toml] [--optim.* --eval.* --sharding.* --model.* ...]
    torchrun --nproc-per-node 2 -m trainer ...            # several processes
    torchx run -s local_cwd dist.ddp -j 1x2 -m trainer -- ...

Modules: `config` (dataclasses, TOML, flags), `distributed` (process group, sharding plan, DMP,
every collective), `optim` (dense / rotation optimizers, LR schedule), `build` (a run's readers,
sharded model, optimizer and pipeline), `step` (the model plus its loss; seeding), `train` (the
loop), `best` (the best validation, early stopping), `run_state` (the run folder; loading a
checkpoint to resume), `evaluate` (predictions of a split, gathered across ranks, and their metrics), `metrics`
(a split's registered metrics, store.metrics, and the train-split statistics they need), `summary` (timers, throughput, memory,
summary.json), `checkpoint` (atomic DCP checkpoints, read through `data_pipeline.checkpoint_files`),
`preflight` (the splits checked before training), `logging` (TensorBoard, console, JSON; the library
warnings known to be harmless silenced). Outputs in OUT: checkpoints/step_<N>/, tensorboard/,
metrics.json, summary.json.
"""
