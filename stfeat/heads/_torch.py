"""PyTorch plumbing shared by the neural heads: device choice, seeding, early-stopped training."""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)


def resolve_device(device: str | None) -> "torch.device":  # noqa: F821
    """``"auto"``/None -> CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def torch_seed(random_state) -> int:
    """An int seed for torch from a sklearn-style ``random_state`` (None -> fresh entropy)."""
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0] % (2**31 - 1))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    return int(random_state)


@contextlib.contextmanager
def seeded(seed: int, device):
    """Seed torch's global generators inside the block and restore them afterwards."""
    import torch

    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def cpu_threads(n_jobs: int | None, work_per_step: float, device):
    """Run the block with the torch CPU threads ``n_jobs`` means (restored afterwards).

    ``None`` = one thread when a training step is small (``work_per_step`` multiply-adds below
    ~3e7): thread start-up then costs more than it saves, and on a busy machine OpenMP's waiting
    threads slow small steps down tens of times. Larger steps use
    :func:`stfeat.heads._cpu.resolve_n_jobs` (``$STFEAT_CPU_THREADS`` or the process's cores).
    The count depends only on these, so refits are bit-identical.
    """
    from stfeat.heads._cpu import resolve_n_jobs, torch_threads

    if device.type != "cpu" and n_jobs is None:
        yield
        return
    n = 1 if n_jobs is None and work_per_step < 3e7 else resolve_n_jobs(n_jobs)
    with torch_threads(n):
        yield


def pearson_loss(pred, target, eps: float = 1e-6):
    """1 - mean over genes of the Pearson correlation within the batch."""
    pc = pred - pred.mean(0, keepdim=True)
    tc = target - target.mean(0, keepdim=True)
    r = (pc * tc).sum(0) / (pc.norm(dim=0) * tc.norm(dim=0) + eps)
    return 1.0 - r.mean()


def train_early_stopping(module, forward: Callable, train: Sequence, valid: Sequence, *,
                         loss_fn: Callable, lr: float, weight_decay: float, batch_size: int,
                         max_epochs: int, patience: int, seed: int, device) -> dict:
    """Train ``module`` with AdamW and keep the state with the lowest validation loss.

    Parameters
    ----------
    module
        The ``torch.nn.Module`` (already on ``device``).
    forward
        ``forward(module, *batch_tensors_without_target) -> prediction``.
    train, valid
        Sequences of CPU tensors with the same first dimension; the last one is the target.
    loss_fn
        ``loss_fn(prediction, target) -> scalar``.
    seed
        Seeds the batch order; dropout uses torch's global generator, which the caller seeds.

    Returns
    -------
    dict
        ``best_epoch`` (0 = the untrained module was best), ``best_val_loss``, ``history``
        (validation loss per epoch, entry 0 before training). The module holds the best weights.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(train[0])
    non_blocking = device.type == "cuda"

    def evaluate() -> float:
        module.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(valid[0]), 4096):
                batch = [t[i:i + 4096].to(device, non_blocking=non_blocking) for t in valid]
                pred = forward(module, *batch[:-1])
                total += float(loss_fn(pred, batch[-1])) * len(batch[-1])
                count += len(batch[-1])
        return total / max(count, 1)

    best = evaluate()
    history = [best]
    best_state = copy.deepcopy(module.state_dict())
    best_epoch, bad = 0, 0
    for epoch in range(1, max_epochs + 1):
        module.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            if len(idx) < 2:
                continue
            batch = [t[idx].to(device, non_blocking=non_blocking) for t in train]
            loss = loss_fn(forward(module, *batch[:-1]), batch[-1])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val = evaluate()
        history.append(val)
        if val < best - 1e-6 * abs(best):
            best, best_epoch, bad = val, epoch, 0
            best_state = copy.deepcopy(module.state_dict())
        else:
            bad += 1
            if bad >= patience:
                break
    module.load_state_dict(best_state)
    module.eval()
    logger.debug("early stopping: best epoch %d of %d, val loss %.4g", best_epoch,
                 len(history) - 1, best)
    return {"best_epoch": best_epoch, "best_val_loss": best, "history": history}


def state_to_arrays(module, prefix: str = "module.") -> dict[str, np.ndarray]:
    """A module's ``state_dict`` as numpy arrays (for safetensors)."""
    return {prefix + k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def arrays_to_state(arrays: dict[str, np.ndarray], prefix: str = "module.") -> dict:
    """Inverse of :func:`state_to_arrays`."""
    import torch

    return {k[len(prefix):]: torch.from_numpy(np.array(v)) for k, v in arrays.items()
            if k.startswith(prefix)}
