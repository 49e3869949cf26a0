"""``python -m fisherkit``: the command line (``fisherkit.apps.cli``)."""

from fisherkit.apps.cli import main

main()
