"""Shipping: which shard a record belongs to, the shippers that stream the LOG to the
shards, and LOG retention below the shards' acks.
"""
