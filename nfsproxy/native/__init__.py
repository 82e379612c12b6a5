"""The Python face of the native data plane (nfsproxy._dataplane): the proxy's clock and
the native LOG writer with its group commit. The native relay's face is nfsproxy.relay.native.
"""
