"""The daemons' wiring: the proxy daemon, its control service, `nfsj up`, configuration
and the proxy's metrics.
"""
