"""How a process is built, started and stopped.

Owns the wiring (:func:`server.app.core.build_core` creates every client and long-lived
object once and injects it), the route table, the process lifecycle (``igsync serve``), the
CLI, ``igsync doctor`` and the embedded stores of ``make run``/``make test``.

Entry object: :class:`server.app.core.Core`. May import every other ``server`` package and
``handlers`` (it is the only package that does); nothing imports it but ``server.__main__``.
"""
