"""``python -m segformer COMMAND …``: the ``segformer`` command without the console script."""

import sys

from segformer.cli import main

sys.exit(main())
