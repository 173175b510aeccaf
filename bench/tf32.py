"""TF32 on CUDA, set explicitly around feature and metric computations.

PyTorch's default lets cuDNN convolutions use TF32 (10 mantissa bits), which moves Inception features and kNN
distances; clean-fid as released runs that way on Ampere and Hopper. Every extractor and metric here states its
choice through ``tf32(allowed)``. The flags are process-global while feature workers run forwards from several
threads, so forwards that want the same setting share it, one that wants the other waits, and the last to leave
restores the flags it found.
"""

import threading
from contextlib import contextmanager

import torch

_state = threading.Condition()
_users, _allowed, _saved = 0, None, None


def set_default(allowed: bool = False) -> None:
    """The process-wide setting outside any ``tf32`` block (the CLIs call it once, before any thread starts)."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed


@contextmanager
def tf32(allowed: bool):
    """cuBLAS and cuDNN TF32 set to ``allowed`` for the block, shared safely between threads."""
    global _users, _allowed, _saved
    with _state:
        _state.wait_for(lambda: _users == 0 or _allowed == allowed)
        if _users == 0:
            _saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            set_default(allowed)
            _allowed = allowed
        _users += 1
    try:
        yield
    finally:
        with _state:
            _users -= 1
            if _users == 0:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = _saved
                _state.notify_all()
