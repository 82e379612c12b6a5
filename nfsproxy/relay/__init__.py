"""The data path: the journaling relay between clients and the NAS (XID table, capture,
conflict table, in-flight stamps, the journal's quota policy, the answers the proxy makes itself).
"""
