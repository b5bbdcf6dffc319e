"""Calls to Meta's Graph API and the customer profiles they feed.

Owns the outbound HTTP client and the classification of Meta's answers (``client``) and the
profile look-ups and refreshes of customers (``profiles``).

Entry object: :class:`server.graph.profiles.ProfileService`. May import ``server.realtime``
and below.
"""
