"""``alexnet serve``: a web page and a JSON API classifying uploaded images with a trained model.

:func:`create_app` builds the FastAPI app around a :class:`~alexnet.runtime.inference.Classifier`;
:func:`run_server` serves it with uvicorn; :class:`Limits` says what an upload may be;
:func:`~alexnet.serve.loadtest.compare_batching` measures it on loopback.
"""

from __future__ import annotations

from .app import create_app
from .server import ServerThread, is_loopback, run_server
from .uploads import Limits, UploadError

__all__ = ["create_app", "run_server", "ServerThread", "Limits", "UploadError", "is_loopback"]
