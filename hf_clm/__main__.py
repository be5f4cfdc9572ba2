import sys

from hf_clm.cli import main

sys.exit(main())
