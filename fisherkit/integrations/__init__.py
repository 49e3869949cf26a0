"""fisherkit inside the frameworks users train with; each module imports its framework, which is not
a dependency of fisherkit: ``laplace`` (laplace-torch curvature backends), ``lightning`` (a callback),
``huggingface`` (a regularized ``Trainer``), ``avalanche`` (a strategy plugin, without importing
Avalanche)."""
