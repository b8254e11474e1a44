"""fastmlp: train hundreds of small ReLU MLPs at once, for experiments on depth and generalization."""
__version__ = "0.1.0"
