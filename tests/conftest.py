"""Session-wide test settings."""

import torch

# The tests use small matrices: one intra-op thread avoids oversubscribing the cores (pytest,
# worker processes and BLAS threads would otherwise compete), which is several times faster.
torch.set_num_threads(1)
