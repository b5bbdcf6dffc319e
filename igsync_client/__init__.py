"""A small synchronous client for igsync's internal senders (see README)."""
