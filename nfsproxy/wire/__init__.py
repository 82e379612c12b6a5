"""The wire: XDR and the ONC-RPC, NFSv3, MOUNT, portmapper and NFSACL codecs, and the one
programs table. Sans-IO: nothing here does I/O.
"""
