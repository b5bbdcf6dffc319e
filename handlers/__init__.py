"""Tornado handlers only: parse and authorize the request, call one core function, write JSON.

Each module exposes ``routes``; :mod:`server.app.routes` collects them.
"""
