"""Test-wide settings: one intra-op thread. The tests use tiny models, where OpenMP start-up costs more than it
saves, and on a busy 2-core machine thread contention made tiny Hessian-vector products hundreds of times slower."""
import torch

torch.set_num_threads(1)
