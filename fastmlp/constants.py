"""Constants shared by every backend: one Python place, passed to CUDA as #defines."""

# Philox4x32-10 (Salmon et al. 2011, Random123): round multipliers and Weyl key increments.
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10

# Random streams: the second key word.  Every random number is a function of (seed, stream, counter).
STREAM_TRAIN_X = 1   # training inputs (and temperature-task classes)
STREAM_TEST_X = 2    # test inputs
STREAM_INIT = 3      # initial weights
STREAM_ORDER = 4     # minibatch order
STREAM_FOLD = 5      # cross-validation fold assignment

# Output classes of every network.
N_CLASSES = 2

# Training losses; a loss's index here is its code in the kernels of every backend (reference.output_loss).
LOSSES = ("xent", "mse", "hinge2")
