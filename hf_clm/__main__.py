import sys

from hf_clm.commands.cli import main

sys.exit(main())
