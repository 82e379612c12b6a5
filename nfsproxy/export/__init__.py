"""The read-only NFS export of the past: the request handler and its server.
"""
