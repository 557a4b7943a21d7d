"""``python -m livseg.cli ...`` (and ``torchrun ... -m livseg.cli ...``): the ``livseg`` command."""

import sys

from livseg.cli import main

sys.exit(main())
