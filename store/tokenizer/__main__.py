"""``python -m store.tokenizer --data DIR --out SIDS``: see ``store.tokenizer.pipeline``."""

import sys

from store.tokenizer.pipeline import main

sys.exit(main())
