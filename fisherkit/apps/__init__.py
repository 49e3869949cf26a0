"""fisherkit's applications, apart from the library: the ``fisherkit`` command line (``python -m
fisherkit``), the continual-learning experiment harness (data, scenarios, training, the ``cl``
command and the demo) and the Fisher-type comparison."""
