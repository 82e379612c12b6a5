"""The Python face of the native data plane (nfsproxy._dataplane): the proxy's clock,
the native LOG writer and group commit, and the native relay.
"""
