"""Triton's Python backend API (``import triton_python_backend_utils as pb_utils``) for models served here.

The implementation lives in `serving.backends.python`; this module is the name Triton's
``model.py`` files import it by.
"""
