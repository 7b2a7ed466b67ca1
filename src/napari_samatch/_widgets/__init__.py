"""The napari docks of napari-samatch: Data, Train and Review, and Cohort for a folder of volumes.

Three docks rather than one: they match the three things a user does (choose and paint data; train;
review, correct and export), each can be opened, closed or tabified on its own from the Plugins menu,
and none is so tall that it needs scrolling on a laptop screen. They share one controller per viewer,
so it does not matter which is opened first.
"""

import sys


def _keep_triton_out() -> None:
    """Stop PyTorch from importing Triton on machines without CUDA.

    The first optimiser a worker creates makes PyTorch import ``torch._dynamo``, which imports Triton
    when it is installed. Triton bundles LLVM; once napari has an OpenGL context on Mesa's llvmpipe
    (Xvfb, remote desktops, many VMs) loading it crashes the whole process with a segmentation fault.
    Without CUDA, Triton has no use (PyTorch's CPU compiler does not need it), so it is hidden.
    """
    if "triton" in sys.modules:
        return
    try:
        import torch

        if not torch.cuda.is_available():
            sys.modules["triton"] = None  # type: ignore[assignment]  # import triton -> ImportError
    except Exception:  # noqa: BLE001 - never break the plugin's import over this
        pass


_keep_triton_out()


def _preload() -> None:
    """Import the engine, the SAM backends and ``torch._dynamo`` here, on the main thread, once.

    Otherwise the first run imports them in its worker thread; PyTorch's lazy imports are not safe
    against a concurrent import from another thread (operator registration races), and a long import
    in a worker holds the interpreter lock in bursts that stall the UI.
    """
    import torch

    from ..core import sam  # noqa: F401
    from ..core.engine import engine  # noqa: F401

    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)  # the first optimiser imports torch._dynamo


_preload()

from ._cohort_widget import CohortWidget  # noqa: E402
from ._data_widget import DataWidget  # noqa: E402
from ._review_widget import ReviewWidget  # noqa: E402
from ._train_widget import TrainWidget  # noqa: E402

__all__ = ["DataWidget", "TrainWidget", "ReviewWidget", "CohortWidget"]
