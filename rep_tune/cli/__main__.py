"""`python -m rep_tune.cli ...`: the same as the `rep-tune` command."""
import sys

from rep_tune.cli import main

sys.exit(main())
