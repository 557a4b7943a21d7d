"""``python -m livseg ...`` (and ``torchrun ... -m livseg segment ...``): the ``livseg`` command."""

import sys

from livseg.cli import main

sys.exit(main())
