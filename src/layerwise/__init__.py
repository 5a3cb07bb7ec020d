"""layerwise: layer-wise (Kronecker-factored) preconditioning for PyTorch."""

__version__ = "0.1.0"


def load(out_dir, experiment, invocation=None):
    """Stored results of ``experiment`` under ``out_dir`` as a tidy DataFrame (latest
    invocation by default; ``invocation=i`` or ``"all"``), the resolved config in
    ``df.attrs["config"]``. See :func:`layerwise.experiments.results.load`."""
    from layerwise.experiments.results import load as load_results

    return load_results(out_dir, experiment, invocation)


__all__ = ["__version__", "load"]
