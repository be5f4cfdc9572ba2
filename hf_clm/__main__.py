"""``python -m hf_clm``: the ``hf-clm`` command line as a module.

What launchers start: ``accelerate launch -m hf_clm train ...``, ``torchrun -m hf_clm train ...``.
"""

import sys

from hf_clm.commands.cli import main

sys.exit(main())
