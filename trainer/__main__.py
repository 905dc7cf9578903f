"""`python -m trainer --data DIR --model NAME [--sids DIR] [flags]`; under torchrun for several processes.

Exit codes: 0 done; 2 bad flag / config / data (the message names it); 3 non-finite loss (no
checkpoint is written for that step); 4 a checkpoint that cannot be resumed from.
"""

from __future__ import annotations

import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    rank = int(os.environ.get("RANK", "0"))
    # Before the imports below: importing FBGEMM (through TorchRec) logs at INFO on the root logger,
    # which would configure it with logging's default format first and make this call a no-op.
    logging.basicConfig(  # libraries (TorchRec, FBGEMM) log a lot at INFO: warnings only
        level=logging.WARNING,
        format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("trainer").setLevel(logging.INFO if rank == 0 else logging.WARNING)

    from torch.distributed.checkpoint.api import CheckpointException

    from data_pipeline import checkpoint_files
    from data_pipeline.spec import DataError
    from trainer.checkpoint import CheckpointError
    from trainer.config import ConfigError, parse_args

    try:
        cfg = parse_args(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from trainer.step import NonFiniteLossError
    from trainer.train import train

    try:
        train(cfg)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    except CheckpointException as e:  # DCP's, a BaseException: a checkpoint file unreadable or unfit
        print(f"error: {checkpoint_files.describe(cfg.out, e)}", file=sys.stderr)
        return 4
    except ValueError as e:  # the model zoo rejects a spec / config it cannot serve
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
