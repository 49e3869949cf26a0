"""fisherkit inside the frameworks users train with. Each module imports its framework, which is
not a dependency of fisherkit: ``fisherkit.integrations.laplace`` (a laplace-torch curvature backend)."""
