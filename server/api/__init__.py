"""The contract with callers (API.md): who is calling and how errors look.

Owns principals from bearer tokens (:class:`server.api.auth.Authenticator`), the JSON
error shape (:class:`server.api.errors.ApiError`), the input schemas — one validator per
input — and cursor pagination.

Entry object: :class:`server.api.auth.Authenticator`. May import ``server.ops``, ``models``
and ``config``.
"""
