"""fastmlp: train hundreds of small ReLU MLPs at once, for experiments on depth and generalization.

    from fastmlp import Engine, parse_task, generate
"""
__version__ = "0.1.0"

_LAZY = {"Engine": "cpu_engine", "NetworkResult": "engine", "parse_task": "tasks", "generate": "tasks",
         "iter_chunks": "tasks", "UsageError": "errors",
         "ntk_kernel": "ntk", "empirical_ntk": "ntk"}
__all__ = sorted(_LAZY)


def __getattr__(name):
    # Numba is imported on first use, so `fastmlp --help` and `import fastmlp` stay fast.
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'fastmlp' has no attribute {name!r}")
